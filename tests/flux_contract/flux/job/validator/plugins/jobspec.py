"""Stand-in for flux/job/validator/plugins/jobspec.py: where CLI plugins' validate() runs.

As in flux-core, the CLI plugins are loaded with prog "validate" and called with the Jobspec
object only; the submitting userid stays in this method's ``args`` (a ValidatorJobInfo).
"""

import json

from flux.cli.plugin import CLIPluginRegistry
from flux.job import validate_jobspec
from flux.job.validator.validator import ValidatorPlugin


class Validator(ValidatorPlugin):
    def configure(self, args):
        self.plugins = CLIPluginRegistry("validate")

    def validate(self, args):
        result, jobspec = validate_jobspec(json.dumps(args.jobspec))
        self.plugins.validate(jobspec)
