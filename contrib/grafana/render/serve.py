#!/usr/bin/env python3
"""Serves the dashboard renderer and proxies /api/ to a Prometheus (no CORS needed).

    python3 serve.py --prometheus http://127.0.0.1:9090 [--listen 127.0.0.1:8088]
    then open http://127.0.0.1:8088/?range=5m

/            index.html, render.js, style.css and node_modules/uplot from this folder
/mailhop.json  the dashboard (default: ../mailhop.json)
/api/...     forwarded to the Prometheus HTTP API, GET only
"""
import argparse
import functools
import http.server
import os
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


class Handler(http.server.SimpleHTTPRequestHandler):
    prometheus = ""
    dashboard = ""

    def do_GET(self):
        if self.path.startswith("/api/"):
            return self.proxy()
        if self.path.split("?")[0] == "/mailhop.json":
            return self.send_file(self.dashboard, "application/json")
        return super().do_GET()

    def send_file(self, path, ctype):
        with open(path, "rb") as f:
            body = f.read()
        self.reply(200, ctype, body)

    def proxy(self):
        try:
            with urllib.request.urlopen(self.prometheus + self.path, timeout=30) as r:
                self.reply(r.status, r.headers.get("Content-Type", "application/json"), r.read())
        except urllib.error.HTTPError as e:  # Prometheus's 400/422 carry a JSON error
            self.reply(e.code, "application/json", e.read())
        except OSError as e:
            self.reply(502, "text/plain", f"prometheus unreachable: {e}".encode())

    def reply(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description="serve the dashboard renderer")
    ap.add_argument("--listen", default="127.0.0.1:8088")
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=os.path.join(HERE, "..", "mailhop.json"))
    args = ap.parse_args()
    Handler.prometheus = args.prometheus.rstrip("/")
    Handler.dashboard = args.dashboard
    host, port = args.listen.rsplit(":", 1)
    handler = functools.partial(Handler, directory=HERE)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler)
    print(f"serving on http://{host}:{server.server_port}/ (prometheus {Handler.prometheus})",
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
