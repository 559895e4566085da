"""runtime_env: env_vars, a working_dir shipped from here, py_modules, pip into an environment of its
own; at init() for every task, and per task or actor on top of it."""
import os
import sys
import tempfile
from pathlib import Path

import ray

project = Path(tempfile.mkdtemp())
(project / "settings.txt").write_text("from the working dir\n")
(project / "helper.py").write_text("def greet(name):\n    return f'hello {name}'\n")
(project / ".git").mkdir()
(project / ".git" / "big").write_text("not shipped\n")
lib = Path(tempfile.mkdtemp()) / "mylib"
lib.mkdir()
(lib / "__init__.py").write_text("VERSION = '1.0'\n")

# (local py_modules are given to init(): Ray takes a local directory only for the whole job)
ray.init(runtime_env={"env_vars": {"STAGE": "test"}, "working_dir": str(project), "py_modules": [str(lib)]})


@ray.remote
def in_working_dir():
    import helper  # importable from the working dir

    return open("settings.txt").read().strip(), helper.greet("ray"), os.environ["STAGE"], os.path.exists(".git")


assert ray.get(in_working_dir.remote()) == ("from the working dir", "hello ray", "test", False)


@ray.remote(runtime_env={"env_vars": {"STAGE": "override", "EXTRA": "1"}})
def env_vars():
    return os.environ["STAGE"], os.environ["EXTRA"]


assert ray.get(env_vars.remote()) == ("override", "1")


@ray.remote
def with_module():
    import mylib

    return mylib.VERSION


assert ray.get(with_module.remote()) == "1.0"


@ray.remote(runtime_env={"pip": ["tomli-w==1.2.0"]})
def with_pip():
    import tomli_w

    return tomli_w.dumps({"a": 1}).strip()


assert ray.get(with_pip.remote(), timeout=300) == "a = 1"


@ray.remote
def without_pip():
    try:
        import tomli_w  # noqa: F401
    except ImportError:
        return "isolated"
    return "leaked"


assert ray.get(without_pip.remote()) == "isolated"


@ray.remote
class Configured:
    def stage(self):
        return os.environ["STAGE"], os.environ.get("ROLE")


actor = Configured.options(runtime_env={"env_vars": {"ROLE": "actor"}}).remote()
assert ray.get(actor.stage.remote()) == ("test", "actor")


@ray.remote(runtime_env={"pip": ["surely-no-such-package-xyz==9.9.9"]})
def broken():
    return 1


try:
    ray.get(broken.remote(), timeout=300)
except ray.exceptions.RuntimeEnvSetupError as e:
    assert "surely-no-such-package-xyz" in str(e), str(e)
else:
    raise AssertionError("a failed pip install must fail the task")
print("OK", file=sys.stdout)
