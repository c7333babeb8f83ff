/*
 * libp11ne.so: the PKCS#11 module of the local ACM enclave image (local_backend/acm_enclave).
 *
 * Why a wrapper: nginx uses AWS's key URI unchanged
 * (pkcs11:model=p11ne-token;manufacturer=Amazon;token=<label>;id=%01;object=acm-key;type=private),
 * and SoftHSMv2, the real token underneath, names itself "SoftHSM v2" / "SoftHSM project".
 * This module forwards every call to SoftHSM (dlopen'ed from $P11NE_BACKEND) and changes only
 * what AWS's own module (aws-nitro-enclaves-acm src/vtok_p11) presents differently:
 *   - C_GetInfo / C_GetSlotInfo / C_GetTokenInfo: manufacturer "Amazon", model "p11ne-token",
 *     serial "EVT<slot>" (hex, the RPC server's slot index), flags as vtok_p11's token
 *     (initialized, user PIN initialized, login required, write-protected, SO PIN locked);
 *   - the token is read-only to its users, as vtok_p11's: read-write sessions and every call
 *     that creates, changes, copies, wraps or destroys objects answer
 *     CKR_TOKEN_WRITE_PROTECTED / CKR_FUNCTION_NOT_SUPPORTED, so nothing on the parent can
 *     replace, export or remove the key;
 *   - every signature the token makes (C_Sign / C_SignFinal returning one) appends one byte to
 *     $P11NE_STATE/sign/<hex(label)>: p11-kit forks one p11-kit-remote per connection, so the
 *     count lives in a file (O_APPEND writes are atomic) the RPC server reads for DescribeToken.
 * The PKCS#11 types are declared here (a subset of the v2.40 header) so that building needs
 * only gcc, not a -dev package.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef unsigned long CK_ULONG, CK_RV, CK_SLOT_ID, CK_SESSION_HANDLE, CK_FLAGS;
typedef unsigned char CK_BYTE, CK_BBOOL;
typedef struct { CK_BYTE major, minor; } CK_VERSION;
typedef struct {
	CK_VERSION cryptokiVersion; CK_BYTE manufacturerID[32]; CK_FLAGS flags;
	CK_BYTE libraryDescription[32]; CK_VERSION libraryVersion;
} CK_INFO;
typedef struct {
	CK_BYTE slotDescription[64]; CK_BYTE manufacturerID[32]; CK_FLAGS flags;
	CK_VERSION hardwareVersion, firmwareVersion;
} CK_SLOT_INFO;
typedef struct {
	CK_BYTE label[32]; CK_BYTE manufacturerID[32]; CK_BYTE model[16]; CK_BYTE serialNumber[16];
	CK_FLAGS flags; CK_ULONG ulMaxSessionCount, ulSessionCount, ulMaxRwSessionCount,
	ulRwSessionCount, ulMaxPinLen, ulMinPinLen, ulTotalPublicMemory, ulFreePublicMemory,
	ulTotalPrivateMemory, ulFreePrivateMemory;
	CK_VERSION hardwareVersion, firmwareVersion; CK_BYTE utcTime[16];
} CK_TOKEN_INFO;
typedef struct { CK_SLOT_ID slotID; CK_ULONG state; CK_FLAGS flags; CK_ULONG ulDeviceError; }
	CK_SESSION_INFO;
typedef void *CK_VOID_PTR;
typedef void (*CK_FN)(void); /* cast to each call's own type at the call */

/* CK_FUNCTION_LIST (v2.40): a version, then 68 function pointers in the header's order. */
#define N_FUNCTIONS 68
typedef struct { CK_VERSION version; CK_FN fn[N_FUNCTIONS]; } CK_FUNCTION_LIST;
enum {
	F_GetInfo = 2, F_GetFunctionList = 3, F_GetSlotInfo = 5, F_GetTokenInfo = 6,
	F_InitToken = 9, F_InitPIN = 10, F_SetPIN = 11, F_OpenSession = 12, F_GetSessionInfo = 15,
	F_SetOperationState = 17, F_CreateObject = 20, F_CopyObject = 21, F_DestroyObject = 22,
	F_SetAttributeValue = 25, F_Sign = 43, F_SignFinal = 45, F_GenerateKey = 59,
	F_GenerateKeyPair = 60, F_WrapKey = 61, F_UnwrapKey = 62, F_DeriveKey = 63,
};

#define CKR_OK 0x0UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKR_FUNCTION_NOT_SUPPORTED 0x54UL
#define CKR_TOKEN_WRITE_PROTECTED 0xE2UL
#define CKF_RW_SESSION 0x2UL
#define CKF_LOGIN_REQUIRED 0x4UL
#define CKF_WRITE_PROTECTED 0x2UL
#define CKF_USER_PIN_INITIALIZED 0x8UL
#define CKF_TOKEN_INITIALIZED 0x400UL
#define CKF_SO_PIN_LOCKED 0x400000UL

static CK_FUNCTION_LIST *backend;
static CK_FUNCTION_LIST ours;

static void pad(CK_BYTE *field, size_t size, const char *text) {
	size_t n = strlen(text);
	memset(field, ' ', size);
	memcpy(field, text, n < size ? n : size);
}

/* "<state>/<kind>/<hex of the label without its padding>" */
static int label_path(char *out, size_t size, const char *kind, const CK_BYTE label[32]) {
	const char *state = getenv("P11NE_STATE");
	char hex[65];
	int len = 32, i;
	if (!state) return -1;
	while (len > 0 && label[len - 1] == ' ') len--;
	for (i = 0; i < len; i++) snprintf(hex + 2 * i, 3, "%02x", label[i]);
	hex[2 * len] = 0;
	return snprintf(out, size, "%s/%s/%s", state, kind, hex) < (int)size ? 0 : -1;
}

static CK_RV p11ne_GetInfo(CK_INFO *info) {
	CK_RV rv = ((CK_RV(*)(CK_INFO *))backend->fn[F_GetInfo])(info);
	if (rv == CKR_OK) {
		pad(info->manufacturerID, 32, "Amazon");
		pad(info->libraryDescription, 32, "p11ne");
	}
	return rv;
}

static CK_RV p11ne_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO *info) {
	CK_RV rv = ((CK_RV(*)(CK_SLOT_ID, CK_SLOT_INFO *))backend->fn[F_GetSlotInfo])(slot, info);
	if (rv == CKR_OK) {
		pad(info->slotDescription, 64, "p11ne-slot");
		pad(info->manufacturerID, 32, "Amazon");
	}
	return rv;
}

static CK_RV p11ne_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *info) {
	CK_RV rv = ((CK_RV(*)(CK_SLOT_ID, CK_TOKEN_INFO *))backend->fn[F_GetTokenInfo])(slot, info);
	char path[4096], serial[17] = "";
	FILE *f;
	if (rv != CKR_OK || !(info->flags & CKF_TOKEN_INITIALIZED)) return rv;
	pad(info->manufacturerID, 32, "Amazon");
	pad(info->model, 16, "p11ne-token");
	info->flags = CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_LOGIN_REQUIRED |
		      CKF_WRITE_PROTECTED | CKF_SO_PIN_LOCKED;
	info->ulMaxRwSessionCount = 0;
	info->ulRwSessionCount = 0;
	if (label_path(path, sizeof path, "slots", info->label) == 0 && (f = fopen(path, "r"))) {
		unsigned idx;
		if (fscanf(f, "%u", &idx) == 1) snprintf(serial, sizeof serial, "EVT%02X", idx);
		fclose(f);
	}
	if (serial[0]) pad(info->serialNumber, 16, serial);
	return rv;
}

static CK_RV p11ne_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_VOID_PTR notify,
			       CK_SESSION_HANDLE *session) {
	if (flags & CKF_RW_SESSION) return CKR_TOKEN_WRITE_PROTECTED;
	return ((CK_RV(*)(CK_SLOT_ID, CK_FLAGS, CK_VOID_PTR, CK_VOID_PTR, CK_SESSION_HANDLE *))
			backend->fn[F_OpenSession])(slot, flags, app, notify, session);
}

static void count_signature(CK_SESSION_HANDLE session) {
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;
	char path[4096];
	int fd;
	if (((CK_RV(*)(CK_SESSION_HANDLE, CK_SESSION_INFO *))backend->fn[F_GetSessionInfo])(
		    session, &si) != CKR_OK)
		return;
	if (((CK_RV(*)(CK_SLOT_ID, CK_TOKEN_INFO *))backend->fn[F_GetTokenInfo])(si.slotID, &ti) !=
	    CKR_OK)
		return;
	if (label_path(path, sizeof path, "sign", ti.label) != 0) return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) return;
	if (write(fd, "s", 1) != 1) { /* a lost count shows as fewer signatures than handshakes */ }
	close(fd);
}

static CK_RV p11ne_Sign(CK_SESSION_HANDLE s, CK_BYTE *data, CK_ULONG len, CK_BYTE *sig,
			CK_ULONG *siglen) {
	CK_RV rv = ((CK_RV(*)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *))
			    backend->fn[F_Sign])(s, data, len, sig, siglen);
	if (rv == CKR_OK && sig != NULL) count_signature(s);
	return rv;
}

static CK_RV p11ne_SignFinal(CK_SESSION_HANDLE s, CK_BYTE *sig, CK_ULONG *siglen) {
	CK_RV rv = ((CK_RV(*)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG *))backend->fn[F_SignFinal])(
		s, sig, siglen);
	if (rv == CKR_OK && sig != NULL) count_signature(s);
	return rv;
}

static CK_RV write_protected(void) { return CKR_TOKEN_WRITE_PROTECTED; }
static CK_RV not_supported(void) { return CKR_FUNCTION_NOT_SUPPORTED; }
static const CK_FN p11ne_write_protected = (CK_FN)write_protected;
static const CK_FN p11ne_not_supported = (CK_FN)not_supported;

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **list);

static CK_RV load_backend(void) {
	CK_RV (*get)(CK_FUNCTION_LIST **);
	const char *path = getenv("P11NE_BACKEND");
	void *handle;
	if (backend) return CKR_OK;
	if (!path) return CKR_GENERAL_ERROR;
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!handle) return CKR_GENERAL_ERROR;
	get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(handle, "C_GetFunctionList");
	if (!get || get(&backend) != CKR_OK || !backend) return CKR_GENERAL_ERROR;
	ours = *backend;
	ours.fn[F_GetInfo] = (CK_FN)p11ne_GetInfo;
	ours.fn[F_GetFunctionList] = (CK_FN)C_GetFunctionList;
	ours.fn[F_GetSlotInfo] = (CK_FN)p11ne_GetSlotInfo;
	ours.fn[F_GetTokenInfo] = (CK_FN)p11ne_GetTokenInfo;
	ours.fn[F_OpenSession] = (CK_FN)p11ne_OpenSession;
	ours.fn[F_Sign] = (CK_FN)p11ne_Sign;
	ours.fn[F_SignFinal] = (CK_FN)p11ne_SignFinal;
	ours.fn[F_InitToken] = ours.fn[F_InitPIN] = ours.fn[F_SetPIN] = p11ne_write_protected;
	ours.fn[F_CreateObject] = ours.fn[F_CopyObject] = ours.fn[F_DestroyObject] =
		p11ne_write_protected;
	ours.fn[F_SetAttributeValue] = p11ne_write_protected;
	ours.fn[F_SetOperationState] = ours.fn[F_GenerateKey] = ours.fn[F_GenerateKeyPair] =
		p11ne_not_supported;
	ours.fn[F_WrapKey] = ours.fn[F_UnwrapKey] = ours.fn[F_DeriveKey] = p11ne_not_supported;
	return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST **list) {
	CK_RV rv;
	if (!list) return 0x7UL; /* CKR_ARGUMENTS_BAD */
	rv = load_backend();
	if (rv != CKR_OK) return rv;
	*list = &ours;
	return CKR_OK;
}
