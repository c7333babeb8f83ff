"""The local AWS endpoint (moto + extensions) and the Nitro Enclaves emulator.

`server` (the endpoint process), `moto_ext/` (one package per service), `emulator/` (enclave
runtime, NSM, vsock), `parent/` and `host/` (the emulated instances), `up`/`verify`/`cdk` (deploy
and prove a CDK app). Imports: `enclavekit` (the core), moto, boto3; never the constructs or
aws_cdk (it runs the `cdk` CLI as a subprocess instead).
"""
