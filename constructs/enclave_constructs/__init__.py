"""CDK constructs for AWS Nitro Enclaves (not written yet)."""
