"""The Nitro Enclaves emulator: enclave runtime, isolation, NSM, vsock, vsock-proxy, parent.

Imports: the core (`enclavekit.*`), the stdlib and its own modules; never moto (the endpoint
calls the emulator, not the other way).
"""
