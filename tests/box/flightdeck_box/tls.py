"""The TLS proxy on 10.0.64.1:443 and its certificate: the hosts reach the AWS endpoints by
their real names over HTTPS, and the plain HTTP goes on to the emulator. The certificate is
signed by the box CA that tests/box/rootfs.sh puts in the image's trust store."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from pathlib import Path

from .layout import GATEWAY
from .shell import log, sh


class TlsProxy:
    """10.0.64.1:443: terminates TLS (certificate for the AWS endpoint names, signed by the box
    CA) and pipes the plain HTTP bytes, Host header untouched, to the emulator."""

    def __init__(self, cert: Path, key: Path, upstream: tuple[str, int]):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.serve, name="tls", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)
        if self.error:
            raise RuntimeError(f"TLS proxy: {self.error}")

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(lambda loop, ctx: None)  # TLS errors of clients: quiet
        try:
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self.handle, GATEWAY, 443, ssl=self.ctx, reuse_address=True)
            )
        except BaseException as err:
            self.error = err
            self.ready.set()
            return
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    async def handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as err:
            log(f"tls: emulator unreachable: {err}")
            writer.close()
            return

        async def pump(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                try:
                    if dst.can_write_eof():
                        dst.write_eof()
                    else:
                        dst.close()
                except (OSError, RuntimeError):
                    pass

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                try:
                    w.close()
                except Exception:
                    pass


def ensure_server_cert(ca_dir: Path, region: str) -> tuple[Path, Path]:
    """The certificate for the AWS endpoint names, signed by the box CA (made once a region)."""
    cert, key = ca_dir / f"endpoints-{region}.crt", ca_dir / f"endpoints-{region}.key"
    if cert.exists() and key.exists():
        res = subprocess.run(
            ["openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in", str(cert)],
            capture_output=True,
        )
        if res.returncode == 0:
            return cert, key
    names = [
        "*.amazonaws.com",
        f"*.{region}.amazonaws.com",
        f"*.s3.{region}.amazonaws.com",
        f"*.s3-{region}.amazonaws.com",
        "s3.amazonaws.com",
        "*.s3.amazonaws.com",
        f"*.{region}.compute.amazonaws.com",
    ]
    san = ",".join(f"DNS:{n}" for n in names)
    csr = ca_dir / f"endpoints-{region}.csr"
    ext = ca_dir / f"endpoints-{region}.ext"
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    sh("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
       "-out", str(csr), "-subj", f"/CN=*.{region}.amazonaws.com")
    sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"),
       "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-days", "825", "-sha256",
       "-extfile", str(ext), "-out", str(cert))
    key.chmod(0o600)
    csr.unlink()
    ext.unlink()
    return cert, key
