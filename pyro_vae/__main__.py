"""``python -m pyro_vae``: the ``pyro-vae`` command. Python puts the working folder first on
``sys.path`` for ``-m`` (the console script does not): it is dropped here, so that nothing in the
folder a command runs in (a run folder someone shared, say) can be imported, exactly as with
``pyro-vae``. (A folder holding a ``pyro_vae`` package of its own is imported by Python itself
before this runs: in folders you did not make, use ``pyro-vae`` or ``python -P -m pyro_vae``.)"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from pyro_vae.cli import run  # noqa: E402

run()
