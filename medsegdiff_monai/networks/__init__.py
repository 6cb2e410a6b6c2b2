from __future__ import annotations

from .blocks import *  # noqa: F401,F403
from .nets import *  # noqa: F401,F403
from .schedulers import *  # noqa: F401,F403
