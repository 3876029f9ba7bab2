"""The optional C helpers (actorq/_native); everything else is in setup.cfg.

Each extension is ``optional``: without a C compiler the install goes on and actorq uses
the pure-Python fallbacks (see actorq/_native/__init__.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("actorq._native._copy", ["actorq/_native/_copy.c"],
                  extra_compile_args=["-O2"], optional=True),
        Extension("actorq._native._ring", ["actorq/_native/_ring.c"],
                  extra_compile_args=["-O2"], optional=True),
        Extension("actorq._native._pool", ["actorq/_native/_pool.c"],
                  extra_compile_args=["-O2"], optional=True),
    ],
)
