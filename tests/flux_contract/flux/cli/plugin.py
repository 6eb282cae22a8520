"""Stand-in for flux-core's src/bindings/python/flux/cli/plugin.py (not Flux; see the package doc).

``FLUX_CONTRACT_STYLE`` (read at import) picks the behaviour: ``v0.83`` for flux-core
v0.77-v0.83, ``v0.88`` (default) for v0.84 and later. Only what plugins can observe is kept:
option naming, dests, the args proxy, discovery, conflict handling and the call order.
"""

import glob
import os
from abc import ABC

from flux.importer import import_path

STYLE = os.environ.get("FLUX_CONTRACT_STYLE", "v0.88")
if STYLE not in ("v0.83", "v0.88"):
    raise ImportError(f"FLUX_CONTRACT_STYLE={STYLE!r}: use v0.83 or v0.88")
NEW_STYLE = STYLE == "v0.88"
# conf_builtin_get("confdir") of a packaged Flux; tests point it elsewhere.
CONFDIR = os.environ.get("FLUX_CONTRACT_CONFDIR", "/etc/flux")


class CLIPluginOption:
    """Wrap argparse's add_argument: the first ``--`` becomes ``--<prefix>-``."""

    def __init__(self, name, prefix, **kwargs):
        if not name.startswith("--"):
            raise ValueError("Plugins must register only long options.")
        self.name = name.replace("--", f"--{prefix}-", 1) if prefix else name
        self._unprefixed_dest = None
        if "dest" not in kwargs:
            if NEW_STYLE:
                # v0.84+: dest from the prefixed flag; the unprefixed name becomes an alias.
                self._unprefixed_dest = name[2:].replace("-", "_")
                kwargs["dest"] = self.name[2:].replace("-", "_")
            else:
                # v0.77-v0.83: dest is the name without the prefix.
                kwargs["dest"] = name[2:].replace("-", "_")
        self.kwargs = kwargs

    @property
    def dest(self):
        return self.kwargs["dest"]


if NEW_STYLE:

    class PluginArgsProxy:
        """v0.84+: per-plugin view of args mapping unprefixed dests to prefixed ones."""

        __slots__ = ("_ns", "_alias")

        def __init__(self, args, alias):
            object.__setattr__(self, "_ns", args)
            object.__setattr__(self, "_alias", alias)

        def __getattr__(self, name):
            alias = object.__getattribute__(self, "_alias")
            return getattr(object.__getattribute__(self, "_ns"), alias.get(name, name))

        def __setattr__(self, name, value):
            alias = object.__getattribute__(self, "_alias")
            setattr(object.__getattribute__(self, "_ns"), alias.get(name, name), value)


class CLIPlugin(ABC):
    """Base class for a CLI submission plugin."""

    def __init__(self, prog, prefix="ex", version=None):
        self.prog = prog[5:] if prog.startswith("flux ") else prog
        self.path = None
        self.prefix = prefix
        self.version = version
        self.options = []

    def add_option(self, name, **kwargs):
        self.options.append(CLIPluginOption(name, prefix=self.prefix, **kwargs))

    def preinit(self, args):
        pass

    def modify_jobspec(self, args, jobspec):
        pass

    def validate(self, jobspec):
        pass


class CLIPluginRegistry:
    """Finds plugin files, instantiates every CLIPlugin subclass with ONE argument (prog)."""

    def __init__(self, prog):
        self.prog = prog
        self.plugins = []
        self.plugindirs = self._get_searchpath()
        self._load_plugins(prog)

    @staticmethod
    def _get_searchpath():
        default = f"{CONFDIR}/cli/plugins"
        extra = os.environ.get("FLUX_CLI_PLUGINPATH")
        if not NEW_STYLE:
            return [extra] if extra else [default]  # v0.77-v0.83: replaces the default
        paths = [default]
        if extra:
            paths = [s for s in extra.split(":") if s and not s.isspace()] + paths
        return paths

    def _add_plugins(self, path, program):
        module = import_path(path)
        for attr in dir(module):
            if attr.startswith("_"):
                continue
            entry = getattr(module, attr)
            if isinstance(entry, type) and issubclass(entry, CLIPlugin) and entry != CLIPlugin:
                plugin = entry(program)
                plugin.path = module.__file__
                self.plugins.append(plugin)

    def _load_plugins(self, program):
        for plugindir in self.plugindirs:
            for path in sorted(glob.glob(f"{plugindir}/*.py")):
                self._add_plugins(path, program)
        option_dests = {}
        if NEW_STYLE:
            for plugin in self.plugins[:]:
                if any(opt.dest in option_dests for opt in plugin.options):
                    self.plugins.remove(plugin)  # v0.84+: the later plugin is dropped
                else:
                    for opt in plugin.options:
                        option_dests[opt.dest] = opt
            self.options = list(option_dests.values())
        else:
            self.options = []
            for plugin in self.plugins:
                for opt in plugin.options:
                    if opt.dest in option_dests:
                        raise ValueError(
                            f"{opt.name} conflicts with another option (or its `dest`)")
                    self.options.append(opt)
                    option_dests[opt.dest] = 1
        return self

    def add_arguments(self, parser):
        """What the submission commands do with ``registry.options``."""
        group = parser.add_argument_group("Options provided by plugins")
        for opt in self.options:
            group.add_argument(opt.name, **opt.kwargs)

    def _args_for(self, plugin, args):
        if not NEW_STYLE:
            return args
        alias = {
            opt._unprefixed_dest: opt.dest
            for opt in plugin.options
            if opt._unprefixed_dest is not None and opt._unprefixed_dest != opt.dest
        }
        return PluginArgsProxy(args, alias)

    def preinit(self, args):
        for plugin in self.plugins:
            plugin.preinit(self._args_for(plugin, args))

    def modify_jobspec(self, args, jobspec):
        for plugin in self.plugins:
            plugin.modify_jobspec(self._args_for(plugin, args), jobspec)

    def validate(self, jobspec):
        for plugin in self.plugins:
            plugin.validate(jobspec)
