"""Stand-in for flux/importer.py: import a plugin file by path, not registered in sys.modules."""

import importlib.util
import os


def import_path(file_path):
    module_name = os.path.basename(file_path).rstrip(".py")
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
