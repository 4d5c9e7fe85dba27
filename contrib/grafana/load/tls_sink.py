#!/usr/bin/env python3
"""A small SMTP sink that offers STARTTLS, so mailhop's outbound TLS shows up.

    python3 tls_sink.py --listen 127.0.0.1:2527 --cert cert.pem --key key.pem

Accepts every MAIL, RCPT and message and throws the message away (Postfix's
smtp-sink takes the plain hops; it speaks no TLS). Loopback use only.
"""
import argparse
import asyncio
import ssl

EHLO = [b"250-tls-sink", b"250-PIPELINING", b"250-SIZE 1073741824", b"250-8BITMIME",
        b"250-ENHANCEDSTATUSCODES", b"250 STARTTLS"]


async def session(reader, writer, ctx):
    async def say(*lines):
        writer.write(b"".join(line + b"\r\n" for line in lines))
        await writer.drain()

    await say(b"220 tls-sink ESMTP")
    while line := await reader.readline():
        verb = line[:4].upper()
        if verb == b"EHLO":
            await say(*EHLO)
        elif verb == b"STAR":
            await say(b"220 2.0.0 Ready to start TLS")
            await writer.start_tls(ctx)
        elif verb == b"DATA":
            await say(b"354 End data with <CR><LF>.<CR><LF>")
            while (data := await reader.readline()) not in (b".\r\n", b""):
                pass
            await say(b"250 2.0.0 Ok: discarded")
        elif verb == b"QUIT":
            await say(b"221 2.0.0 Bye")
            break
        else:  # HELO, MAIL, RCPT, RSET, NOOP
            await say(b"250 2.0.0 Ok")
    writer.close()


async def main():
    ap = argparse.ArgumentParser(description="SMTP sink with STARTTLS")
    ap.add_argument("--listen", default="127.0.0.1:2527")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    host, port = args.listen.rsplit(":", 1)

    async def handle(r, w):
        try:
            await session(r, w, ctx)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            w.close()

    server = await asyncio.start_server(handle, host, int(port), backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
