"""Run the whole datacrumbs flow once on this machine, as the README's first command does.

An admin's signing service signs a probes file for an ordinary user; the
service path a Flux prolog takes (datacrumbs_service_wrapper start) starts the
tracer for a job of that user; the user's job does known I/O; the epilog path
stops the tracer; the job summary is printed and an HTML report written.

Every step calls the installed commands under the site's prefix, exactly as an
admin or user would type them. Where systemd is not PID 1 (containers, CI
machines), the signing service runs as a plain process and the tracer is
started directly with the same command line as datacrumbs@.service, and the
demo says so.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from ..config import load_config
from ..errors import DatacrumbsError
from ..users import lookup_user

HELP = "run a traced demo job end to end (signing, service path, trace, report)"

DEMO_USER = "dcdemo"
# A job with I/O we can check: 500 x 4 KiB written with write(2), then read back.
WORKLOAD = (
    "import os, sys\n"
    "path = sys.argv[1]\n"
    "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
    "for _ in range(500):\n"
    "    os.write(fd, b'x' * 4096)\n"
    "os.fsync(fd)\n"
    "os.close(fd)\n"
    "with open(path, 'rb', buffering=0) as f:\n"
    "    while f.read(65536):\n"
    "        pass\n"
)


def setup_parser(parser) -> None:
    parser.add_argument("--config", type=Path, help="site config (default: $DATACRUMBS_CONFIG "
                        "or /opt/datacrumbs/etc/datacrumbs/datacrumbs.toml)")
    parser.add_argument("--user", default=DEMO_USER,
                        help=f"ordinary account that runs the job, created if missing "
                             f"(default {DEMO_USER})")
    parser.epilog = "example:\n  sudo /opt/datacrumbs/bin/datacrumbs demo"


class Demo:
    def __init__(self, args, console: Console):
        if args.config:
            os.environ["DATACRUMBS_CONFIG"] = str(args.config.absolute())
        self.cfg = load_config(args.config)
        self.console = console
        self.bin = self.cfg.prefix / "bin"
        self.env = dict(os.environ, DATACRUMBS_CONFIG=str(self.cfg.source or ""))
        self.user_name = args.user
        self.systemd = Path("/run/systemd/system").is_dir() and _pid1_is_systemd()
        self.started: list[subprocess.Popen] = []

    # -- helpers -----------------------------------------------------------------
    def step(self, text: str) -> None:
        self.console.rule(f"[bold]{text}")

    def run(self, argv: list[str], *, as_user: str | None = None, check=True,
            capture=False) -> subprocess.CompletedProcess:
        if as_user:
            argv = ["runuser", "-u", as_user, "--", "env",
                    f"DATACRUMBS_CONFIG={self.env['DATACRUMBS_CONFIG']}", *argv]
        self.console.print(f"[dim]$ {' '.join(shlex.quote(a) for a in argv)}")
        res = subprocess.run(argv, env=self.env, text=True, capture_output=capture)
        if check and res.returncode != 0:
            detail = (res.stderr or "").strip() if capture else ""
            raise DatacrumbsError(f"demo step failed (exit {res.returncode}): "
                                  f"{' '.join(argv)}" + (f": {detail}" if detail else ""))
        return res

    def tool(self, name: str) -> str:
        path = self.bin / name
        if not path.exists():
            raise DatacrumbsError(f"{path} is missing: install first with "
                                  f"`datacrumbs install --prefix {self.cfg.prefix}`")
        return str(path)

    # -- the flow ----------------------------------------------------------------
    def keys(self) -> None:
        self.step("1. Signing key (admin, once per site)")
        if (self.cfg.private_key_dir / "current").exists():
            from ..signing.keys import KeyStore
            store = KeyStore.from_config(self.cfg)
            key_id = store.current_key_id()
            self.console.print(f"key {key_id} already in {self.cfg.private_key_dir}")
            published = store.publish_current()     # an earlier install's key, a new prefix
            if published is not None:
                self.console.print(f"its public key was missing: written to {published}")
        else:
            self.run([self.tool("datacrumbs"), "keys", "init"])

    def signing_service(self) -> None:
        self.step("2. Signing service on the login node")
        from ..signing.client import ping
        if ping(socket_path=self.cfg.socket_path):
            self.console.print(f"already answering on {self.cfg.socket_path}")
            return
        unit = self.cfg.prefix / "etc/datacrumbs/systemd/datacrumbs_sign_probes.service"
        if self.systemd:
            self.run(["ln", "-sf", str(unit), "/etc/systemd/system/datacrumbs_sign_probes.service"])
            self.run(["systemctl", "daemon-reload"])
            self.run(["systemctl", "enable", "--now", "datacrumbs_sign_probes.service"])
        else:
            self.console.print("systemd is not PID 1 here: starting the service as a process "
                               f"(on a login node: systemctl enable --now {unit.name})")
            argv = [self.tool("datacrumbs_sign_probes"), "--config", str(self.cfg.source)]
            self.console.print(f"[dim]$ {' '.join(argv)} &")
            self.started.append(subprocess.Popen(argv, env=self.env))
        deadline = time.monotonic() + 10
        while not ping(socket_path=self.cfg.socket_path):
            if time.monotonic() > deadline:
                raise DatacrumbsError(f"the signing service did not answer on "
                                      f"{self.cfg.socket_path} within 10 s")
            time.sleep(0.1)

    def user(self):
        self.step(f"3. An ordinary user, {self.user_name}")
        try:
            return lookup_user(self.user_name)
        except DatacrumbsError:
            self.run(["useradd", "--create-home", "--shell", "/bin/bash", self.user_name])
            return lookup_user(self.user_name)

    def probes_file(self, account) -> Path:
        self.step("4. The user generates a signed probes file")
        probes = Path(account.home) / "probes.json.gz"
        dc = self.tool("datacrumbs")
        # posix and stdio: what the demo job does. (A site upgraded from before the async
        # set keeps its own signing policy, which may not allow that kind yet.)
        self.run([dc, "probes", "generate", "--set", "posix", "--set", "stdio", "--sign",
                  "--force", "-o", str(probes)], as_user=account.name)
        self.run([dc, "probes", "verify", str(probes)], as_user=account.name)
        return probes

    def job(self, account, probes: Path) -> int:
        jobid = int(time.time())
        self.step(f"5. Job {jobid}: prolog starts datacrumbs@{jobid}.service")
        data = Path(account.home) / f"demo-{jobid}.dat"
        workload = ["/usr/bin/python3", "-c", WORKLOAD, str(data)]
        if self.systemd:
            unit = self.cfg.prefix / "etc/datacrumbs/systemd/datacrumbs@.service"
            self.run(["ln", "-sf", str(unit), "/etc/systemd/system/datacrumbs@.service"])
            self.run(["systemctl", "daemon-reload"])
            wrapper = self.tool("datacrumbs_service_wrapper")
            self.run([wrapper, "start", str(jobid), account.name, str(probes)])
            try:
                self.step("6. The user's job runs (500 x 4 KiB written, then read back)")
                self.run(workload, as_user=account.name)
            finally:
                self.step("7. Epilog stops the tracer and waits for the flush")
                self.run([wrapper, "stop", str(jobid), account.name, str(probes)])
        else:
            self.console.print("systemd is not PID 1 here: starting the tracer with the "
                               "command line of datacrumbs@.service")
            argv = [self.tool("datacrumbs"), "run", str(probes), str(jobid), account.name]
            self.console.print(f"[dim]$ {' '.join(shlex.quote(a) for a in argv)} &")
            daemon = subprocess.Popen(argv, env=self.env)
            try:
                self.run([self.tool("datacrumbs"), "wait-ready", str(jobid), "--timeout", "30",
                          "--pid", str(daemon.pid)])
                self.step("6. The user's job runs (500 x 4 KiB written, then read back)")
                self.run(workload, as_user=account.name)
            finally:
                self.step("7. Epilog stops the tracer and waits for the flush")
                daemon.send_signal(signal.SIGINT)
                try:
                    rc = daemon.wait(timeout=self.cfg.stop_timeout)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    rc = daemon.wait()
            if rc != 0:
                raise DatacrumbsError(f"the tracer exited with status {rc}; see its messages above")
        return jobid

    def report(self, account, jobid: int) -> None:
        self.step("8. The user reads the job summary")
        from ..tracer.daemon import short_host
        from datetime import datetime, timezone
        date = datetime.fromtimestamp(jobid, timezone.utc).strftime("%Y-%m-%d")
        tdir = self.cfg.trace_dir_for(user=account.name, jobid=str(jobid),
                                      host=short_host(), date=date)
        traces = sorted(tdir.glob(f"trace-{account.name}-{jobid}-*.pfw.gz"))
        if not traces:
            raise DatacrumbsError(f"no trace for job {jobid} in {tdir}")
        html = Path(account.home) / f"report-{jobid}.html"
        dc = self.tool("datacrumbs")
        self.run([dc, "report", *map(str, traces), "--html", str(html)], as_user=account.name)
        self.console.print(f"\ntrace:  {traces[0]}\nreport: {html}\n"
                           f"Perfetto: {dc} export --perfetto job-{jobid}.json {traces[0]}  "
                           "then open it at https://ui.perfetto.dev")

    def stop(self) -> None:
        for proc in self.started:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _pid1_is_systemd() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def main(args) -> int:
    if os.geteuid() != 0:
        raise DatacrumbsError("the demo sets up keys, a service and a user: run it as root "
                              "(sudo datacrumbs demo)")
    console = Console(stderr=False)
    demo = Demo(args, console)
    try:
        demo.keys()
        demo.signing_service()
        account = demo.user()
        probes = demo.probes_file(account)
        jobid = demo.job(account, probes)
        demo.report(account, jobid)
    finally:
        demo.stop()
    console.rule("[bold green]demo complete")
    sys.stdout.flush()
    return 0
