"""The local AWS endpoint (moto + extensions) and the Nitro Enclaves emulator."""
