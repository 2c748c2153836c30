# Sourced by hack/cluster-up.sh and hack/node.sh: `kubeconfig FILE USER` writes a kubeconfig for the
# local API server ($APISERVER_PORT) authenticated by USER's client certificate in $pki.
kubeconfig() { # file user
  local b64="base64 -w0"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tokenmint-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$pki/$2.crt")
    client-key-data: $($b64 <"$pki/$2.key")
contexts:
- name: tokenmint-local
  context: {cluster: tokenmint-local, user: $2}
current-context: tokenmint-local
EOF
  chmod 600 "$1"
}
