"""The serving peer for `kiln serve`: a minimal Python HTTP service around onnxruntime scoring
kiln's exported ONNX model, one request at a time per thread (no batching), as a Python user
would write it. POST /predictions/NAME with an image body answers the top-5 classes in the
shape `kiln predict --format json` prints; the preprocessing (resize the shorter side to
size * 256 / 224, centre crop, normalise) comes from the model's metadata.

    onnx_serve.py --onnx model.onnx [--port 8081] [--threads 1]
"""

import argparse
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--onnx", required=True)
    p.add_argument("--port", type=int, default=8081)
    # One thread per session: the threaded server already runs one session per request in
    # flight, and more threads each would oversubscribe the cores.
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    meta = {e.key: e.value for e in onnx.load(a.onnx, load_external_data=False).metadata_props}
    classes = json.loads(meta["classes"])
    size = int(meta["image_size"])
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32).reshape(3, 1, 1)
    std = np.array(json.loads(meta["std"]), dtype=np.float32).reshape(3, 1, 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    session = ort.InferenceSession(a.onnx, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def preprocess(body):
        image = Image.open(io.BytesIO(body)).convert("RGB")
        w, h = image.size
        side = size * 256 // 224
        if w <= h:
            nw, nh = side, max(1, h * side // w)
        else:
            nw, nh = max(1, w * side // h), side
        image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return ((x - mean) / std)[None]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.answer(200, {"ready": True})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                x = preprocess(body)
            except Exception as e:
                return self.answer(400, {"error": str(e)})
            logits = session.run(None, {name: x})[0][0]
            e = np.exp(logits - logits.max())
            probs = e / e.sum()
            top = np.argsort(-probs)[:5]
            self.answer(200, [{"path": "-", "predictions": [
                {"class": classes[i], "probability": float(probs[i])} for i in top]}])

        def answer(self, status, value):
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    print(f"onnx_serve: ready on http://127.0.0.1:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
