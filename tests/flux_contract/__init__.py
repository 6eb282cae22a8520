"""A stand-in for the parts of Flux that run CLI plugins — NOT Flux.

flux-core cannot be installed on these machines (it is in neither Debian's archive nor PyPI;
the PyPI "flux-core" is an unrelated project), so the plugin is tested against this package,
which reproduces the documented contract (/work/shared/reference/flux-interfaces.md) and the
behaviour of flux-core's own source, file by file:

- ``flux/cli/plugin.py``  <- src/bindings/python/flux/cli/plugin.py in two styles selected by
  ``FLUX_CONTRACT_STYLE``: ``v0.83`` (v0.77-v0.83: default dest without the prefix, a dest
  collision is a ValueError, ``FLUX_CLI_PLUGINPATH`` replaces the default directory) and
  ``v0.88`` (v0.84+: default dest with the prefix plus ``PluginArgsProxy`` aliasing the
  unprefixed name, an explicit ``dest=`` gets no alias, a conflicting plugin is dropped,
  ``FLUX_CLI_PLUGINPATH`` is searched before the default directory).
- ``flux/importer.py``    <- src/bindings/python/flux/importer.py (import_path).
- ``flux/job/__init__.py`` <- src/bindings/python/flux/job/Jobspec.py (``_attr_key_prepend``,
  ``setattr``/``getattr`` with their KeyError, ``jobspec.jobspec`` the plain dict, ``dumps``).
- ``flux/job/validator/validator.py`` and ``plugins/jobspec.py`` <- the job-ingest validator:
  ``ValidatorJobInfo(jobspec, userid, flags, urgency)``, worker threads, only
  ValueError/TypeError/OSError become a refusal; anything else kills the worker.
- ``flux/__init__.py``    <- ``flux.Flux()`` raising OSError when no instance runs (--dry-run).
- ``runner.py``           <- how ``flux run|submit`` drive plugins (src/bindings/python/flux/cli/
  base.py, job/Jobspec.py): one registry instance parses and calls ``preinit``, a second one
  calls ``modify_jobspec`` (two instances per run, as observed on v0.88.0), ``validate`` is never
  called by the CLI, errors print ``flux-run: ERROR: <msg>``.

Put this directory on ``sys.path`` (``emulate.py`` does it for subprocesses) to import ``flux``.
"""
