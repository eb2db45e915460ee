"""``nemo_prorl.collectives``: the package's collectives helper under its historical name.

The implementation is :mod:`nemo_prorl.algorithms.collectives` (``algorithms`` imports nothing else of the
package, and its log-prob heads and batch-level advantages need the helper). This name stays importable
for the rest of the package and for plug-ins: importing it yields *the same module object*, so a
``monkeypatch`` of a function here (tests replace ``_cuda_device``) is seen by every caller.
"""

import sys

from nemo_prorl.algorithms import collectives as _impl

sys.modules[__name__] = _impl
