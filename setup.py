"""Packaging beyond what pyproject.toml can say: conf/ (with its `sweep` group, sweeps/) ships as cxr/conf.

conf/ and sweeps/ stay at the top of the repository, where users edit them; in the wheel they become
package data of `cxr`, so an installed cxr finds its configs from any working directory
(`cxr.config.CONF_DIR`). conf/sweep is a link to ../sweeps, which the build follows.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["cxr*", "hydra_plugins*"]), "cxr.conf"],
    package_dir={"cxr.conf": "conf"},
    package_data={"cxr.conf": ["*.yaml", "*/*.yaml"]},
)
