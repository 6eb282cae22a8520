"""``datacrumbs install|uninstall --prefix P``: lay out a node's files, and take them back.

Templates get their ``@NAME@`` placeholders replaced (``@PREFIX@`` everywhere;
``datacrumbs@.service`` also takes its run dir and timeouts, and the signing
unit the directories of its socket and audit log, from the site config,
because systemd cannot read our TOML). Everything written is recorded
in ``<prefix>/share/datacrumbs/install-manifest.txt`` with its SHA-256, so
uninstall removes exactly that, and leaves files an admin changed since
(config, policy) and anything added since (keys) in place, saying so.
"""

from __future__ import annotations

import hashlib
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..atomicfile import atomic_write
from ..config import SiteConfig, default_config_path, load_config, render_config
from ..errors import DatacrumbsError

MANIFEST = Path("share/datacrumbs/install-manifest.txt")
CONSOLE_SCRIPTS = ("datacrumbs", "datacrumbs_sign_probes", "datacrumbs_probe_configurator",
                   "datacrumbs_service_wrapper")
# (package data path, installed path relative to prefix, mode, is a template)
DATA_FILES = (
    ("systemd/datacrumbs@.service", "etc/datacrumbs/systemd/datacrumbs@.service", 0o644),
    ("systemd/datacrumbs_sign_probes.service",
     "etc/datacrumbs/systemd/datacrumbs_sign_probes.service", 0o644),
    ("sbin/datacrumbs_service_run.sh", "sbin/datacrumbs_service_run.sh", 0o755),
    ("sbin/datacrumbs_service_stop.sh", "sbin/datacrumbs_service_stop.sh", 0o755),
    ("flux/job-manager.toml.example", "etc/datacrumbs/flux/job-manager.toml.example", 0o644),
)
VERBATIM_FILES = (
    ("flux/datacrumbs.py", "etc/datacrumbs/flux/cli/plugins/datacrumbs.py", 0o644),
)
# Admin-owned after install: written only when absent, removed only when unchanged.
ADMIN_FILES = (("sign-policy.toml", "etc/datacrumbs/sign-policy.toml", 0o644),)
DIRS = ("etc/datacrumbs/keys", "etc/datacrumbs/probe-sets", "lib/datacrumbs")
# A prefix ends up in unit files and #! lines: keep it to characters that need no quoting.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9/._+-]*")
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


class InstallError(DatacrumbsError):
    """The installation or removal cannot go ahead."""


@dataclass
class Report:
    installed: list[Path] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # messages about files left alone
    removed: list[Path] = field(default_factory=list)


def _safe(path: Path, what: str) -> Path:
    text = str(path)
    if not _SAFE_PATH.fullmatch(text) or "/../" in text + "/" or "/./" in text + "/":
        raise InstallError(f"{what} {text!r} must be an absolute path of letters, digits and "
                           "/._+- only (it is written into systemd units and scripts)")
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data(name: str) -> bytes | None:
    ref = resources.files("datacrumbs") / "data" / name
    return ref.read_bytes() if ref.is_file() else None


def render_template(text: str, values: dict[str, str], name: str) -> str:
    def sub(match):
        key = match.group(1)
        if key not in values:
            raise InstallError(f"template {name} uses unknown placeholder @{key}@")
        return values[key]
    return _PLACEHOLDER.sub(sub, text)


def _unit_seconds(value: float) -> str:
    return f"{value:g}s"


def template_values(prefix: Path, cfg: SiteConfig, source="the site configuration"
                    ) -> dict[str, str]:
    """Placeholder values for the templates: the prefix and what units need of the config
    (systemd cannot read our TOML, so a moved run_dir, socket or audit log is written in)."""
    _safe(cfg.run_dir, f"run_dir in {source}")
    writable = []
    for path, key in ((cfg.socket_path.parent, "socket_path"), (cfg.audit_log.parent, "audit_log")):
        _safe(path, f"the directory of {key} in {source}")
        if str(path) not in writable:
            writable.append(str(path))
    return {"PREFIX": str(prefix), "RUN_DIR": str(cfg.run_dir),
            "START_TIMEOUT": _unit_seconds(cfg.ready_timeout + 10),
            "STOP_TIMEOUT": _unit_seconds(cfg.stop_timeout),
            # "-": a directory that does not exist yet is no reason to refuse to start
            "SIGN_WRITABLE": " ".join(f"-{w}" for w in writable)}


def default_site_config(prefix: Path) -> SiteConfig:
    """The defaults, with every prefix-relative path inside this prefix."""
    etc = prefix / "etc/datacrumbs"
    return SiteConfig(prefix=prefix, public_key_dir=etc / "keys",
                      probe_sets_dir=etc / "probe-sets",
                      bpf_object=prefix / "lib/datacrumbs/datacrumbs.bpf.o",
                      policy_file=etc / "sign-policy.toml")


def read_manifest(prefix: Path) -> list[tuple[str, str, Path]]:
    """(kind, sha256 or target, path) per line; kind f=file, l=symlink, d=directory."""
    path = prefix / MANIFEST
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("\t")
        entry = Path(parts[2]) if len(parts) == 3 else None
        if entry is None or parts[0] not in ("f", "l", "d") or ".." in entry.parts or \
                not (entry == prefix or prefix in entry.parents):
            raise InstallError(f"{path}:{n}: not a datacrumbs install manifest line: {line!r}")
        entries.append((parts[0], parts[1], entry))
    return entries


class _Installer:
    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.entries: dict[Path, tuple[str, str]] = {
            p: (k, v) for k, v, p in read_manifest(prefix)}
        self.report = Report()

    def mkdir(self, rel: str | Path) -> Path:
        path = self.prefix / rel
        missing = [p for p in [path, *path.parents] if not p.exists()
                   and (p == self.prefix or self.prefix in p.parents)]
        path.mkdir(parents=True, exist_ok=True)
        for p in missing:
            self.entries[p] = ("d", "-")
        return path

    def write(self, rel: str, data: bytes, mode: int) -> Path:
        path = self.prefix / rel
        self.mkdir(path.parent.relative_to(self.prefix))
        atomic_write(path, data, mode=mode)
        self.entries[path] = ("f", _sha(data))
        self.report.installed.append(path)
        return path

    def write_admin(self, rel: str, data: bytes, mode: int) -> None:
        """Write only when absent; an existing file is the admin's."""
        path = self.prefix / rel
        if path.exists() or path.is_symlink():
            if path not in self.entries:
                self.report.kept.append(f"{path} exists; left as it is")
            elif self.entries[path][1] != _sha(path.read_bytes()):
                self.report.kept.append(f"{path} was edited; left as it is")
            return
        self.write(rel, data, mode)

    def symlink(self, rel: str, target: Path) -> None:
        path = self.prefix / rel
        self.mkdir(path.parent.relative_to(self.prefix))
        if path.is_symlink() or path.exists():
            if path not in self.entries:
                raise InstallError(f"{path} exists and was not installed by datacrumbs; "
                                   "move it away first")
            path.unlink()
        path.symlink_to(target)
        self.entries[path] = ("l", str(target))
        self.report.installed.append(path)

    def save_manifest(self) -> None:
        path = self.prefix / MANIFEST
        self.mkdir(path.parent.relative_to(self.prefix))
        self.entries[path] = ("f", "-")
        lines = [f"{k}\t{v}\t{p}" for p, (k, v) in sorted(self.entries.items(), key=lambda e: str(e[0]))]
        atomic_write(path, "\n".join(lines) + "\n", mode=0o644)


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def install(prefix: Path, *, build_bpf: bool = True, python: str | None = None) -> Report:
    """Install into prefix; an existing datacrumbs.toml there is kept and used."""
    prefix = _safe(Path(prefix), "install prefix")
    python = python or sys.executable
    _safe(Path(python), "Python interpreter path")
    inst = _Installer(prefix)
    config_path = default_config_path(prefix)
    if config_path.exists():
        cfg = load_config(config_path)
        inst.report.kept.append(f"{config_path} exists; kept (its values are used)")
    else:
        cfg = default_site_config(prefix)
        inst.write(str(config_path.relative_to(prefix)), render_config(cfg).encode(), 0o644)
    values = template_values(prefix, cfg, config_path)
    for src, rel, mode in DATA_FILES:
        data = _data(src)
        if data is None:
            raise InstallError(f"the datacrumbs package is incomplete: data/{src} is missing")
        inst.write(rel, render_template(data.decode(), values, src).encode(), mode)
    for src, rel, mode in VERBATIM_FILES:
        data = _data(src)
        if data is None:
            inst.report.kept.append(f"data/{src} is not in this package; {rel} not installed")
            continue
        inst.write(rel, data, mode)
    for src, rel, mode in ADMIN_FILES:
        data = _data(src)
        if data is not None:
            inst.write_admin(rel, data, mode)
    for rel in DIRS:
        inst.mkdir(rel)
    scripts = _scripts_dir()
    for name in CONSOLE_SCRIPTS:
        target = scripts / name
        if not target.exists():
            raise InstallError(f"{target} is missing: install the datacrumbs package into "
                               f"{sys.prefix} (pip install .) before `datacrumbs install`")
        inst.symlink(f"bin/{name}", target)
    # A symlink to a venv's python would lose the venv (pyvenv.cfg is found by path).
    inst.write("bin/datacrumbs-python", f'#!/bin/sh\nexec {python} "$@"\n'.encode(), 0o755)
    if build_bpf:
        _build_bpf(inst, cfg)
    inst.save_manifest()
    return inst.report


def _build_bpf(inst: _Installer, cfg: SiteConfig) -> None:
    from ..trace import fastfold, fastscan
    from ..trace.fastlines import build_library, library_path
    from ..tracer import build  # H3: compiles vmlinux.h + the CO-RE object

    dest = inst.prefix / "lib/datacrumbs/datacrumbs.bpf.o"
    inst.mkdir("lib/datacrumbs")
    build.build_bpf_object(dest)
    inst.entries[dest] = ("f", _sha(dest.read_bytes()))
    inst.report.installed.append(dest)
    lines = build_library(library_path(dest))   # the daemon's line formatter, beside it
    inst.entries[lines] = ("f", _sha(lines.read_bytes()))
    inst.report.installed.append(lines)
    scan = fastscan.build_library(fastscan.library_path(dest))  # the report's line scanner
    inst.entries[scan] = ("f", _sha(scan.read_bytes()))
    inst.report.installed.append(scan)
    fold = fastfold.build_library(fastfold.library_path(dest))  # the report's stream fold
    inst.entries[fold] = ("f", _sha(fold.read_bytes()))
    inst.report.installed.append(fold)
    from ..tracer.libbpf import print_library_path
    printer = build.build_print_library(Path(print_library_path(dest)))   # libbpf's printing
    inst.entries[printer] = ("f", _sha(printer.read_bytes()))
    inst.report.installed.append(printer)
    if cfg.bpf_object != dest:
        inst.report.kept.append(f"note: bpf_object in the config is {cfg.bpf_object}, not {dest}")


def uninstall(prefix: Path) -> Report:
    """Remove what the manifest lists; keep changed or foreign files and non-empty dirs."""
    prefix = _safe(Path(prefix), "install prefix")
    entries = read_manifest(prefix)
    if not entries:
        raise InstallError(f"{prefix / MANIFEST} does not exist: nothing was installed there "
                           "by `datacrumbs install` (or it was already removed)")
    report = Report()
    for kind, value, path in entries:
        if kind == "l":
            if path.is_symlink():
                path.unlink()
                report.removed.append(path)
        elif kind == "f" and (path.exists() or path.is_symlink()):
            if path.is_symlink() or not path.is_file():
                report.kept.append(f"{path} is no longer a regular file; left as it is")
            elif value != "-" and _sha(path.read_bytes()) != value:
                report.kept.append(f"{path} was changed since install; left as it is")
            else:
                path.unlink()
                report.removed.append(path)
    for kind, _, path in sorted(entries, key=lambda e: len(e[2].parts), reverse=True):
        if kind == "d" and path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
                report.removed.append(path)
            except OSError:
                left = sorted(p.name for p in path.iterdir())[:5]
                report.kept.append(f"{path} is not empty ({', '.join(left)}); left as it is")
    return report
