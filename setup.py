"""What pyproject.toml cannot say: which packages and files go into the wheel.

The console, `web/`, stays at the repository root, where it is edited and where a checkout
serves it from; in a built wheel it becomes `controller/web/` (site-packages/controller/
web/), where `controller.app` finds it. Every folder of our packages and of web/ is a
package here (a namespace package where it has no __init__.py: controller/data, web/js),
and every file in it ships, so a new data file or console folder needs no new line.
tests/integration/test_wheel.py checks that the wheel holds every file of the tree.
Everything else about the build (metadata, dependencies, extras) is in pyproject.toml.
"""

import warnings

from setuptools import find_namespace_packages, setup
from setuptools.warnings import InformationOnly

# An editable install maps controller.web onto web/ with a meta path finder, which
# setuptools announces on every `make`; it is information, not a problem here.
warnings.filterwarnings("ignore", "Editable installation", InformationOnly)

TOP_LEVEL = ("dalaba", "dalaba_ops", "controller", "edge_agent", "firmware_sim")
NOT_SHIPPED = ["*.__pycache__", "__pycache__"]

packages = find_namespace_packages(
    include=[p for name in TOP_LEVEL for p in (name, f"{name}.*")], exclude=NOT_SHIPPED
)
console = find_namespace_packages(where="web", exclude=NOT_SHIPPED)

setup(
    packages=[*packages, "controller.web", *(f"controller.web.{p}" for p in console)],
    package_dir={"controller.web": "web"},
    package_data={"": ["*"]},
    exclude_package_data={"": [".*", "*~", "*.pyc"]},
)
