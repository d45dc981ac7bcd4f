"""Packaging beyond what pyproject.toml can say: conf/ (with its `sweep` group, sweeps/) ships as cxr/conf.

conf/ and sweeps/ stay at the top of the repository, where users edit them; in the wheel they become
package data of `cxr`, so an installed cxr finds its configs from any working directory
(`cxr.config.CONF_DIR`). conf/sweep is a link to ../sweeps, which the build follows.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

# cxr.conf and one data-only package per config folder, nested ones too (conf/hydra/job_logging):
# setuptools wants every folder named
CONF = [
    "cxr.conf",
    *(
        "cxr.conf." + ".".join(folder.relative_to("conf").parts)
        for folder in sorted(Path("conf").rglob("*"))
        if folder.is_dir()
    ),
]

setup(
    packages=[*find_namespace_packages(include=["cxr*", "hydra_plugins*"]), *CONF],
    package_dir={"cxr.conf": "conf"},
    package_data={
        **{package: ["*.yaml"] for package in CONF},
        "cxr.serving.app": ["templates/*.html", "static/*"],  # cxr.app's page, vendored
        "cxr.evaluation": ["templates/*.j2"],  # the report card's template
    },
)
