"""Stand-in for flux.job's Jobspec (src/bindings/python/flux/job/Jobspec.py), not Flux.

Kept: the attribute key prefixing of setattr/getattr (a key not starting with ``attributes.``
gets ``attributes.system.`` unless it starts with ``user.`` or ``system.``), getattr's bare
KeyError for a missing key, ``.jobspec`` as the plain dict, ``dumps`` and the V1 checks the
validator applies before plugins see the jobspec.
"""

import json
import os
from collections import abc


def _attr_key_prepend(key):
    if not key.startswith("attributes."):
        if not key.startswith(("user.", "system.")):
            key = "system." + key
        key = "attributes." + key
    return key


def _set_treedict(in_dict, key, val):
    path = key.split(".", 1)
    if len(path) == 2:
        _set_treedict(in_dict.setdefault(path[0], {}), path[1], val)
    else:
        in_dict[key] = val


class Jobspec:
    top_level_keys = {"resources", "tasks", "version", "attributes"}

    def __init__(self, resources, tasks, attributes, version):
        if not isinstance(resources, abc.Sequence):
            raise TypeError("resources must be a sequence")
        if not isinstance(tasks, abc.Sequence):
            raise TypeError("tasks must be a sequence")
        if not isinstance(attributes, abc.Mapping):
            raise TypeError("attributes must be a mapping")
        if not isinstance(version, int):
            raise TypeError("version must be an integer")
        self.jobspec = {"resources": resources, "tasks": tasks, "attributes": attributes,
                        "version": version}

    def getattr(self, key):
        value = self.jobspec
        for attr in _attr_key_prepend(key).split("."):
            value = value.get(attr)
            if value is None:
                raise KeyError
        return value

    def setattr(self, key, val):
        try:
            _set_treedict(self.jobspec, _attr_key_prepend(key), val)
        except TypeError as e:
            raise TypeError(f"failed to set {key} to {val}: {e}")

    def dumps(self, **kwargs):
        return json.dumps(self.jobspec, ensure_ascii=False, **kwargs)

    @property
    def attributes(self):
        return self.jobspec.get("attributes", None)


class JobspecV1(Jobspec):
    def __init__(self, resources, tasks, attributes, version=1):
        if version != 1:
            raise ValueError("version must be 1")
        super().__init__(resources, tasks, attributes, version)
        system = attributes.get("system")
        if not isinstance(system, abc.Mapping):
            raise ValueError("attributes.system must be a mapping")
        if "duration" not in system:
            raise ValueError("attributes.system.duration is a required key")

    @classmethod
    def from_command(cls, command, num_tasks=1, cwd=None, environment=None):
        resources = [{"type": "slot", "count": num_tasks, "label": "task",
                      "with": [{"type": "core", "count": 1}]}]
        tasks = [{"command": list(command), "slot": "task", "count": {"per_slot": 1}}]
        jobspec = cls(resources, tasks, attributes={"system": {"duration": 0}})
        jobspec.setattr("system.environment",
                        dict(os.environ) if environment is None else environment)
        jobspec.setattr("system.cwd", os.getcwd() if cwd is None else cwd)
        return jobspec


def validate_jobspec(jobspec_json, require_version=None):
    """Like flux.job.validate_jobspec: JSON in, (True, JobspecV1) out or ValueError/TypeError."""
    obj = json.loads(jobspec_json)
    missing = Jobspec.top_level_keys - set(obj)
    if missing:
        raise ValueError(f"Missing key ({sorted(missing)[0]})")
    return True, JobspecV1(**obj)
