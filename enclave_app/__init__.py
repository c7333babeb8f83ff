"""The program that runs inside the enclave, unchanged in the emulator or on AWS.

Only the transports differ (`/dev/nsm` ioctl or the emulator's NSM socket; AF_VSOCK or emulated
vsock), and `enclavekit.transport` picks them at start; nothing else here knows which. Imports
are relative inside the package so it runs under any package name (``app`` in an EIF built by
``enclavekit build-enclave``, ``enclave_app`` in a checkout); see README.md.
Imports: the stdlib, cbor2, cryptography, boto3 and the vendored pure modules of
enclave.json only (tests/test_import_rules.py).
"""
