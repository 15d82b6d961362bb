"""Stand-in for the get-pip.py that ansible-test downloads from outside the package registries.

ansible-test runs it inside an empty virtual environment with pip-install arguments
(e.g. ``--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel``). pip comes from the
interpreter's own ensurepip, then installs the requested packages from the package index.
"""
import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = ("--no-setuptools", "--no-wheel")

# ensurepip blanks pip's configuration in this process; the install must see the machine's (index, certificates).
pip_environment = dict(os.environ)
ensurepip.bootstrap()
arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY_OPTIONS]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + arguments, env=pip_environment))
