#!/usr/bin/env bash
# Regenerates the known-answer vectors in this directory from a private
# swtpm with tpm2-tools (swtpm, swtpm-tools, tpm2-tools, openssl, python3).
# Usage: generate.sh OUT_DIR   (then copy the files listed at the end here)
#
# What it does:
#  1. swtpm_setup provisions a TPM with swtpm's local CA (RSA-3072 root and
#     intermediate, SHA-256): ECC P-384 and RSA EK certificates.
#  2. swtpm runs on free loopback ports; PCR 15 (SHA-256) is extended with an
#     "executable" digest then a "config" digest, as Quorate's measured
#     launch does; the matching event log is written by eventlog.py (same
#     encoding as quorate_attestation::eventlog).
#  3. tpm2_createek/createak make an ECC EK and an ECDSA P-256 AK under it;
#     a P-256 "vote key" is created under an owner primary with authPolicy =
#     PolicyPCR(sha256:15) from a trial session; the AK certifies it.
#  4. tpm2_quote quotes sha256:15 with Quorate's qualifying data (computed in
#     python exactly as quorate_attestation::qualifying_data does).
set -euo pipefail
OUT=$(realpath "$1"); mkdir -p "$OUT"
HERE=$(dirname "$(realpath "$0")")
W=$(mktemp -d); trap 'kill $(cat $W/state/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/state" "$W/ca"
cat > "$W/localca.conf" <<C
statedir = $W/ca
signingkey = $W/ca/signkey.pem
issuercert = $W/ca/issuercert.pem
certserial = $W/ca/certserial
C
cat > "$W/setup.conf" <<C
create_certs_tool= /usr/bin/swtpm_localca
create_certs_tool_config = $W/localca.conf
create_certs_tool_options = /etc/swtpm-localca.options
active_pcr_banks = sha256
C
swtpm_setup --tpm2 --tpmstate "$W/state" --config "$W/setup.conf" --createek --create-ek-cert \
  --create-platform-cert --ecc --lock-nvram --overwrite >/dev/null
P=$(python3 -c 'import socket
for p in range(36000,40000,2):
  try:
    a=socket.socket();a.bind(("127.0.0.1",p));b=socket.socket();b.bind(("127.0.0.1",p+1));a.close();b.close();print(p);break
  except OSError: pass')
swtpm socket --tpm2 --tpmstate dir="$W/state" --server type=tcp,port=$P,bindaddr=127.0.0.1 \
  --ctrl type=tcp,port=$((P+1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
  --pid file="$W/state/pid" --daemon
export TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=$P TSS2_LOG=all+none
cd "$W"
openssl x509 -in ca/swtpm-localca-rootca-cert.pem -outform der -out "$OUT/ek_root.der"
openssl x509 -in ca/issuercert.pem -outform der -out "$OUT/ek_intermediate.der"
tpm2_nvread 0x1c00016 -o "$OUT/ek_cert_ecc.der" 2>/dev/null
tpm2_nvread 0x1c00002 -o "$OUT/ek_cert_rsa.der" 2>/dev/null
# The EK public areas the certificates certify (TCG templates via tpm2_createek).
tpm2_createek -G ecc384 -c ekx.ctx -u "$OUT/ek_ecc384.pub" >/dev/null; tpm2_flushcontext -t
tpm2_createek -G rsa -c ekr.ctx -u "$OUT/ek_rsa.pub" >/dev/null; tpm2_flushcontext -t
EXE=$(printf 'quorate executable v1' | sha256sum | cut -d' ' -f1)
CFG=$(printf 'quorate cluster config v1' | sha256sum | cut -d' ' -f1)
tpm2_pcrextend 15:sha256=$EXE
tpm2_pcrextend 15:sha256=$CFG
RESET=$(tpm2_readclock | awk '/reset_count/ {print $2}')
tpm2_createek -c ek.ctx -G ecc -u ek.pub >/dev/null
tpm2_flushcontext -t
tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name >/dev/null
tpm2_flushcontext -t; tpm2_flushcontext -s
tpm2_startauthsession -S trial.ctx
tpm2_policypcr -S trial.ctx -l sha256:15 -L policy.digest >/dev/null
tpm2_flushcontext trial.ctx
tpm2_createprimary -C o -G ecc256 -c prim.ctx >/dev/null
tpm2_create -C prim.ctx -G ecc256:ecdsa-sha256 -a 'fixedtpm|fixedparent|sensitivedataorigin|sign|noda' \
  -L policy.digest -u vote.pub -r vote.priv >/dev/null
tpm2_flushcontext -t
tpm2_load -C prim.ctx -u vote.pub -r vote.priv -c vote.ctx -n vote.name >/dev/null
tpm2_flushcontext -t
tpm2_certify -c vote.ctx -C ak.ctx -g sha256 -o certify.msg -s certify.sig >/dev/null
tpm2_flushcontext -t
NONCE=000102030405060708090a0b0c0d0e0f
TLS=$(printf 'tls public key' | sha256sum | cut -d' ' -f1)
QD=$(python3 - "$NONCE" "$TLS" vote.name <<'PY'
import sys, hashlib, struct
nonce, tls, name = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), open(sys.argv[3], 'rb').read()
m = b'quorate/attestation/v1/quote\0' + b'\x01' + struct.pack('>I', len(nonce)) + nonce + tls + struct.pack('>H', len(name)) + name
print(hashlib.sha256(m).hexdigest())
PY
)
tpm2_quote -c ak.ctx -l sha256:15 -q $QD -m quote.msg -s quote.sig -o quote.pcrs -g sha256 >/dev/null
tpm2_flushcontext -t
tpm2_pcrread sha256:15 -o pcr15.bin >/dev/null
# Credential activation: our software MakeCredential, the TPM's ActivateCredential.
MANIFEST=$HERE/../../Cargo.toml
cargo build -q --manifest-path "$MANIFEST" --example make_credential
MAKECRED=$(dirname "$MANIFEST")/../target/debug/examples/make_credential
tpm2_readpublic -c ek.ctx -o cred_ek256.pub >/dev/null
tpm2_flushcontext -t
tpm2_createprimary -C e -G ecc384:aes256cfb -g sha384 \
  -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt' -c ek384.ctx >/dev/null
tpm2_readpublic -c ek384.ctx -o cred_ek384.pub >/dev/null
tpm2_flushcontext -t
CRED=$(openssl rand -hex 32)
EPH256=$(openssl rand -hex 32)
EPH384=$(openssl rand -hex 48)
"$MAKECRED" cred_ek256.pub ak.name $CRED $EPH256 cred256.bin
"$MAKECRED" cred_ek384.pub ak.name ${CRED:0:64} $EPH384 cred384.bin
tpm2_startauthsession --policy-session -S sess.ctx
tpm2_policysecret -S sess.ctx -c e >/dev/null
tpm2_activatecredential -c ak.ctx -C ek.ctx -i cred256.bin -o act256.out -P "session:sess.ctx" >/dev/null
tpm2_flushcontext sess.ctx; tpm2_flushcontext -t
tpm2_activatecredential -c ak.ctx -C ek384.ctx -i cred384.bin -o act384.out >/dev/null
tpm2_flushcontext -t
RSARAND=$(openssl rand -hex 64)
"$MAKECRED" "$OUT/ek_rsa.pub" ak.name $CRED $RSARAND credrsa.bin
tpm2_startauthsession --policy-session -S sess.ctx
tpm2_policysecret -S sess.ctx -c e >/dev/null
tpm2_activatecredential -c ak.ctx -C ekr.ctx -i credrsa.bin -o actrsa.out -P "session:sess.ctx" >/dev/null
tpm2_flushcontext sess.ctx; tpm2_flushcontext -t
[ "$(xxd -p -c 256 actrsa.out)" = "$CRED" ] || { echo "RSA activation returned another secret" >&2; exit 1; }
[ "$(xxd -p -c 256 act256.out)" = "$CRED" ] || { echo "P-256 activation returned another secret" >&2; exit 1; }
[ "$(xxd -p -c 256 act384.out)" = "$CRED" ] || { echo "P-384 activation returned another secret" >&2; exit 1; }
echo "credential activation: the TPM recovered our credentials (P-256, P-384 and RSA-2048 EKs)"
cp cred_ek256.pub cred_ek384.pub cred256.bin cred384.bin credrsa.bin "$OUT/"
printf '%s\n' "$RSARAND" > "$OUT/ephemeral_rsa.hex"
printf '%s\n' "$CRED" > "$OUT/credential.hex"
printf '%s\n' "$EPH256" > "$OUT/ephemeral256.hex"
printf '%s\n' "$EPH384" > "$OUT/ephemeral384.hex"
python3 - "$OUT" "$EXE" "$CFG" "$RESET" <<'PY'
import sys, struct
out, exe, cfg, reset = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
def ev2(pcr, ty, digest, data):
    return struct.pack('<III', pcr, ty, 1) + struct.pack('<H', 0x000B) + digest + struct.pack('<I', len(data)) + data
spec = b'Spec ID Event03\0' + struct.pack('<IBBBBI', 0, 0, 2, 0, 2, 1) + struct.pack('<HH', 0x000B, 32) + b'\0'
log = struct.pack('<II', 0, 3) + b'\0' * 20 + struct.pack('<I', len(spec)) + spec
log += ev2(0, 3, b'\0' * 32, b'Quorate TPM Boot' + struct.pack('<I', reset))
log += ev2(15, 6, exe, struct.pack('<II', 0x51525401, 32) + exe)
log += ev2(15, 6, cfg, struct.pack('<II', 0x51525402, 32) + cfg)
open(out + '/eventlog.bin', 'wb').write(log)
PY
cp ak.pub ak.name vote.pub vote.name policy.digest certify.msg certify.sig quote.msg quote.sig pcr15.bin "$OUT/"
printf '%s\n' "$EXE" > "$OUT/executable.sha256"
printf '%s\n' "$CFG" > "$OUT/config.sha256"
printf '%s\n' "$NONCE" > "$OUT/nonce.hex"
printf '%s\n' "$TLS" > "$OUT/tls_key.sha256"
printf '%s\n' "$QD" > "$OUT/qualifying_data.hex"
tpm2_eventlog "$OUT/eventlog.bin" > "$OUT/eventlog.tpm2_eventlog.txt"
tpm2_shutdown -c >/dev/null 2>&1 || true
