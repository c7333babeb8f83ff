"""The Nitro Enclaves emulator: enclave runtime, isolation, NSM, vsock, vsock-proxy, parent."""
