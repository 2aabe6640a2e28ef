"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks (loopback only).

It serves GET /v1/models and POST /v1/chat/completions. Answers come from a responder (the tiny checkpoint, or a
canned text), optionally after a fixed latency; the responder may also refuse a request by returning (HTTP status,
message), answered with an error body as vLLM's. A script of failures (HTTP codes, malformed JSON, a hang) can be
played first, one per request.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

CANNED = (
    "<think>\n<discrimination> low voice, red picture. Polarity: negative </discrimination>\n"
    "<calibration> strong. </calibration>\n</think>\n<answer>-1.8</answer>"
)


class TinyModelResponder:
    """Answers with the tiny checkpoint: decodes the base64 mp4 and WAV parts and generates from them. One video per
    request (what OpenAITeacher sends): the processor gives every video of a call the same fps."""

    def __init__(self, model_path: str, max_new_tokens: int = 16):
        from msathinker.modeling import load_thinker

        self.model, self.processor = load_thinker(model_path)
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> str:
        from msathinker.media import decode_clip

        content, videos, audios = [], [], []
        videos_kwargs = {"do_sample_frames": False}
        for part in body["messages"][-1]["content"]:
            if part["type"] == "video_url":
                data = base64.b64decode(part["video_url"]["url"].split(",", 1)[1])
                with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
                    f.write(data)
                    f.flush()
                    clip = decode_clip(f.name, audio=False)
                videos.append(clip.frames)
                videos_kwargs["fps"] = 1 / clip.frame_spacing  # the clip's own rate, as MSACollator.videos_kwargs
                content.append({"type": "video", "video": "clip"})
            elif part["type"] == "audio_url":
                with wave.open(io.BytesIO(base64.b64decode(part["audio_url"]["url"].split(",", 1)[1]))) as w:
                    pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
                audios.append(pcm.astype(np.float32) / 32767)
                content.append({"type": "audio", "audio": "clip"})
            else:
                content.append(part)
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        audio_kwargs = {"max_length": max(len(a) for a in audios)} if audios else {}
        inputs = self.processor(
            text=[text], videos=videos or None, audio=audios or None, return_tensors="pt",
            videos_kwargs=videos_kwargs, audio_kwargs=audio_kwargs,
        )  # fmt: skip
        with self.lock:
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]


Respond = Callable[[dict], str | tuple[int, str]]
"""A request body -> the answer text, or (HTTP status, message) to refuse the request."""


class ChatServer:
    """Start with `with ChatServer(...) as url:`; `url` is the API root (http://127.0.0.1:PORT/v1)."""

    def __init__(self, respond: Respond = lambda body: CANNED, script: list | None = None, latency: float = 0.0):
        self.respond, self.script, self.latency = respond, list(script or []), latency
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    action = server.script.pop(0) if server.script else "ok"
                if isinstance(action, int):
                    return self._send(action, json.dumps({"error": {"message": f"scripted {action}"}}).encode())
                if action == "malformed":
                    return self._send(200, b"{not json")
                if action == "hang":
                    time.sleep(2.0)
                    return self._send(200, b"{}")
                time.sleep(server.latency)
                answer = server.respond(body)
                if isinstance(answer, tuple):
                    status, message = answer
                    error = {"object": "error", "message": message, "type": "BadRequestError", "code": status}
                    return self._send(status, json.dumps(error).encode())
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": answer}} for i in range(body.get("n", 1))
                ]
                self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
