"""The program inside the local ACM for Nitro Enclaves image (AWS's `p11ne`, src/vtok_init).

It runs in the emulated enclave like every other image (same runtime layer, namespaces, NSM and
vsock) and does what AWS's image does: `p11-kit server` on vsock port 9999 in front of the
token's PKCS#11 module, and the provisioning RPC server on vsock port 10000. Imports inside the
package are relative, so it runs as `p11ne` in the image and as
`local_backend.acm_enclave.p11ne` in a checkout.
"""
