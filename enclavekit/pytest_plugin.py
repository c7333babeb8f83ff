"""pytest plugin for users' own tests: a local endpoint and a deployed CDK app as fixtures.

Registered through the `pytest11` entry point, so installing enclavekit makes the fixtures
available; nothing starts unless a test asks for a fixture.
"""

from __future__ import annotations
