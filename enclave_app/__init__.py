"""The program that runs inside the enclave, unchanged in the emulator or on AWS."""
