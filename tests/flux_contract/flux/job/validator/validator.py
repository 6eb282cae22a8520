"""Stand-in for flux/job/validator/validator.py (the job-ingest validator), not Flux.

Kept: ValidatorJobInfo with its required keys, validator plugins called in worker threads,
ValueError/TypeError/EnvironmentError turned into a refusal (errnum 1, the message), and any
other exception escaping ``validate`` — which on a real system kills the validator worker, so
the user reads only "Unrecoverable error: worker unexpectedly exited".
"""

import concurrent.futures
import json


class WorkerDied(RuntimeError):
    """What a real Flux shows as 'worker unexpectedly exited'."""


class ValidatorResult:
    def __init__(self):
        self.errnum = 0
        self.errmsgs = []

    def push_result(self, errnum, errmsg=None):
        self.errnum = max(self.errnum, errnum)
        if errmsg and errmsg not in self.errmsgs:
            self.errmsgs.append(errmsg)

    @property
    def errmsg(self):
        return ", ".join(self.errmsgs)

    @property
    def success(self):
        return self.errnum == 0


class ValidatorJobInfo:
    """jobspec (dict), userid (int, the authenticated submitter), flags, urgency."""

    required_keys = {"jobspec", "userid", "flags", "urgency"}

    def __init__(self, jobinfo):
        if self.required_keys - jobinfo.keys():
            raise ValueError("Missing keys in input. Did you mean to use --jobspec-only?")
        self.jobinfo = jobinfo

    def __getattr__(self, attr):
        return self.jobinfo[attr]


class ValidatorPlugin:
    def __init__(self, parser=None):
        pass

    def configure(self, args):
        pass

    def validate(self, job):
        raise NotImplementedError


class JobValidator:
    """Runs the given validator plugin classes (default: the jobspec plugin) on one job."""

    def __init__(self, plugin_classes=None):
        if plugin_classes is None:
            from flux.job.validator.plugins.jobspec import Validator

            plugin_classes = [Validator]
        self.validators = [cls() for cls in plugin_classes]
        for validator in self.validators:
            validator.configure(None)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.validators))

    def stop(self):
        self.executor.shutdown()

    def validate(self, jobinfo):
        if isinstance(jobinfo, str):
            jobinfo = json.loads(jobinfo)
        job = ValidatorJobInfo(jobinfo)
        futures = [self.executor.submit(v.validate, job) for v in self.validators]
        result = ValidatorResult()
        for fut in concurrent.futures.as_completed(futures):
            try:
                res = fut.result()
                if res is not None:
                    result.push_result(*res)
            except (ValueError, TypeError, EnvironmentError) as exc:
                result.push_result(1, str(exc))
            except Exception as exc:  # noqa: BLE001
                raise WorkerDied(
                    f"Unrecoverable error: worker unexpectedly exited ({type(exc).__name__})"
                ) from exc
        return result
