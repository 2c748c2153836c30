# Developer entry points. The control plane is a set of local processes
# (hack/cluster-up.sh); nothing here needs Docker.
SHELL := /usr/bin/env bash
KUBECONFIG := $(CURDIR)/.cluster/kubeconfig
export KUBECONFIG

.PHONY: cluster-up cluster-down crds demo demo-trino test lint bench bench-authz image

cluster-up:
	@hack/cluster-up.sh

cluster-down:
	@hack/cluster-down.sh

# Regenerate the CRD manifest from the Rust types (write to a temp file so a
# failed build does not truncate the checked-in manifest).
crds:
	@mkdir -p crds
	@for kind in apitoken apitokenverifier; do \
	  cargo run --quiet -- crd $$kind > crds/$$kind.yaml.tmp && mv crds/$$kind.yaml.tmp crds/$$kind.yaml && \
	  cp crds/$$kind.yaml charts/tokenmint/crds/$$kind.yaml; \
	done

demo:
	@hack/demo.sh

# After `make demo`: one query per tenant through a real Trino reading a verifier's trino output.
demo-trino:
	@hack/demo-trino.sh

# The operator image without a Docker engine, reproducibly: target/image/{oci/,tokenmint.tar}.
image:
	@hack/build-image.sh

# Unit + integration tests; starts (and afterwards stops) the cluster if needed.
test:
	@hack/test.sh

lint:
	cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings
	"$$(hack/install-tools.sh)" lint --strict charts/tokenmint

# Benchmark against the local control plane; pass flags with BENCH_ARGS="...".
# Builds the operator and the bench (a workspace member, bench/): the bench runs
# target/release/tokenmint as its operator; the workspace shares one target/ at the root.
bench: cluster-up
	cargo build --release -p tokenmint -p tokenmint-bench --bin tokenmint --bin tokenmint-bench
	@hack/stop-demo-operator.sh bench
	target/release/tokenmint-bench $(BENCH_ARGS)

# tokenmint authz behind nginx: RSS, requests/s against the no-auth ceiling, revocation -> refusal.
bench-authz: cluster-up
	@hack/stop-demo-operator.sh bench-authz
	TOKENMINT_NGINX="$$(hack/install-nginx.sh)" cargo test --release --test authz_bench -- --ignored --nocapture
