"""dbdl's errors: one tree rooted in :class:`dbdl.Error`.

The classes are defined in the in-database package (``dbdl_udf.errors``) so that code running in
the server raises the very classes the client catches.
"""

from dbdl_udf.errors import *  # noqa: F401,F403
from dbdl_udf.errors import __all__  # noqa: F401
