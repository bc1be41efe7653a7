"""A Unix-socket pass-through to the Docker engine, so one worker's view of the
engine can be taken away and given back without touching the engine (which
every other container on the host needs).

    docker_proxy.py LISTEN_SOCKET TARGET_SOCKET

The worker gets DOCKER_HOST=unix://LISTEN_SOCKET. Killing this process (by its
PID) and removing the socket file is, for that worker, a Docker daemon that went
away: new connections fail at once, open ones are cut.
"""

import asyncio
import os
import sys

LISTEN, TARGET = sys.argv[1], sys.argv[2]


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def handle(client_r, client_w):
    try:
        up_r, up_w = await asyncio.open_unix_connection(TARGET)
    except OSError:
        client_w.close()
        return
    a = asyncio.create_task(pipe(client_r, up_w))
    b = asyncio.create_task(pipe(up_r, client_w))
    await asyncio.gather(a, b)
    for w in (up_w, client_w):
        w.close()


async def main():
    if os.path.exists(LISTEN):
        os.unlink(LISTEN)
    server = await asyncio.start_unix_server(handle, path=LISTEN)
    print(f"proxying {LISTEN} -> {TARGET}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
