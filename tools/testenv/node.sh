# The real worker node of the test cluster, sourced by up.sh and down.sh: containerd and runc
# (Debian's packages), the CNI bridge plugin on the bridge nasop0 (10.244.0.0/24, the host is
# 10.244.0.1: the node IP, where the API server, cluster DNS and the kubelet answer pods),
# kube-proxy (iptables), CoreDNS and a kubelet named worker-0, and the image registry the
# kubelet pulls from (127.0.0.1:PORT, its storage in the cache so pushed layers persist).
# Needs root: namespaces, mounts, cgroups, iptables.
node_bridge=nasop0
node_ip=10.244.0.1
node_subnet=10.244.0.0/24
node_name=worker-0
node_packages="containerd runc containernetworking-plugins iptables conntrack"

# Installs what Debian provides, once.
node_install() {
  local missing=""
  command -v containerd >/dev/null || missing="$missing containerd"
  command -v runc >/dev/null || missing="$missing runc"
  [ -x /usr/lib/cni/bridge ] || missing="$missing containernetworking-plugins"
  command -v iptables >/dev/null || missing="$missing iptables"
  command -v conntrack >/dev/null || missing="$missing conntrack"
  [ -z "$missing" ] && return 0
  echo "installing Debian's$missing for the real test node" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $node_packages >/dev/null
}

# The bridge before anything binds the node IP.
node_network() {
  [ "$(id -u)" = 0 ] || { echo "testenv: the real node needs root (namespaces, mounts, cgroups, iptables)" >&2; exit 1; }
  ip link show "$node_bridge" >/dev/null 2>&1 || ip link add "$node_bridge" type bridge
  ip addr replace "$node_ip/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  sysctl -qw net.ipv4.ip_forward=1
  [ -f /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  return 0
}

# Starts the registry, containerd, CoreDNS, kube-proxy and the kubelet; waits for Ready.
node_up() { # bin state kubeconfig
  local bin=$1 state=$2 kubeconfig=$3 n=$2/node
  mkdir -p "$n/cni" "$n/cni-ipam" "$n/kubelet" "$n/containerd" "$n/certs.d"
  local registry_port kubelet_port
  registry_port=$(port); kubelet_port=$(port)
  local storage=${NASOP_CACHE:-$HOME/.cache/nasop}/registry
  mkdir -p "$storage"
  cat > "$n/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$registry_port}
YML
  OTEL_TRACES_EXPORTER=none start registry "$bin/registry" serve "$n/registry.yml"
  wait_for "the image registry" registry 30 curl -sf "http://127.0.0.1:$registry_port/v2/"
  echo "127.0.0.1:$registry_port" > "$state/registry"

  # The sandbox image, built here (the public pause image cannot be pulled) and pushed.
  local pause=127.0.0.1:$registry_port/testenv/pause:3.10
  if ! curl -sf "http://127.0.0.1:$registry_port/v2/testenv/pause/manifests/3.10" >/dev/null; then
    cc -static -O2 -o "$n/pause" "$here/pause.c"
    local ctr
    ctr=$(buildah from scratch)
    buildah copy -q "$ctr" "$n/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
    buildah commit -q --rm "$ctr" "$pause" >/dev/null
    buildah push -q --tls-verify=false "$pause" "docker://$pause"
  fi

  cat > "$n/cni/10-nasop.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "nasop", "plugins": [
  {"type": "bridge", "bridge": "$node_bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$n/cni-ipam",
            "ranges": [[{"subnet": "$node_subnet", "gateway": "$node_ip"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
  # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and the kubelet asks for
  # oom_score_adj -998 for sandboxes.
  cat > "$n/containerd.toml" <<TOML
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$n/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$n/certs.d"
TOML
  start containerd containerd --config "$n/containerd.toml"
  wait_for containerd containerd 30 ctr -a "$n/containerd.sock" version

  cat > "$n/Corefile" <<CF
.:53 {
    bind $node_ip
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
}
CF
  start coredns "$bin/coredns" -conf "$n/Corefile"
  wait_for "cluster DNS" coredns 30 bash -c "exec 3<>/dev/tcp/$node_ip/53"

  # masqueradeAll: service traffic between pods on the one bridge returns through the host.
  local proxy_health
  proxy_health=$(port)
  cat > "$n/kube-proxy.yaml" <<YML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $kubeconfig}
mode: iptables
hostnameOverride: $node_name
clusterCIDR: $node_subnet
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:$(port)
healthzBindAddress: 127.0.0.1:$proxy_health
YML
  start kube-proxy "$bin/kube-proxy" --config "$n/kube-proxy.yaml"
  # Up once the API server's own Service has its rules (pods reach it as 10.96.0.1:443).
  wait_for kube-proxy kube-proxy 60 bash -c 'iptables -t nat -S KUBE-SERVICES | grep -q "default/kubernetes:https"'

  # cgroupfs and failCgroupV1: this machine has cgroup v1 controllers (and no systemd).
  # Anonymous, always-allowed kubelet API: the API server's `kubectl logs` reaches it
  # without client certificates on this single-user test node.
  cat > "$n/kubelet.yaml" <<YML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
clusterDNS: [$node_ip]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$n/containerd.sock
imageServiceEndpoint: unix://$n/containerd.sock
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
serializeImagePulls: false
maxPods: 50
podLogsDir: $n/pod-logs
YML
  start kubelet "$bin/kubelet" --config "$n/kubelet.yaml" --kubeconfig "$kubeconfig" \
    --root-dir "$n/kubelet" --cert-dir "$n/kubelet/pki" --node-ip "$node_ip" \
    --hostname-override "$node_name" --node-labels nasop.dev/testenv-node=real --v=1
  wait_for "the real node $node_name" kubelet 120 kubectl wait --for=condition=Ready "node/$node_name" --timeout=1s
}

# Leaves no process, mount, network namespace, interface or iptables chain of the node.
node_down() { # state
  local state=$1 n=$1/node
  [ -d "$n" ] || { ip link del "$node_bridge" 2>/dev/null; return 0; }
  # Container processes outlive containerd (their shims), so: the shims of this containerd,
  # then every process left in the kubelet's cgroups.
  pkill -9 -f "containerd-shim-runc-v2 .*-address $n/containerd.sock" 2>/dev/null
  local d pass
  for pass in 1 2 3; do
    for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
      [ -d "$d" ] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
    sleep 0.2
  done
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kube-proxy /sys/fs/cgroup/unified/kubepods; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # Mounts under the node's state (overlay roots, volumes, sandboxes' shm), deepest first,
  # and the pods' network namespaces that containerd pinned in /run/netns.
  awk -v p="$n/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    umount -l "$ns" 2>/dev/null; rm -f "$ns"
  done
  # The kubelet's, kube-proxy's and the CNI plugins' chains (KUBE-*, CNI-*), and the rules
  # that jump to them.
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in nat filter mangle; do
      "$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-A" && / -j (KUBE|CNI)-/' | sed 's/^-A/-D/' |
        while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null; done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null
      done
    done
  done
  ip link del "$node_bridge" 2>/dev/null
  rm -rf "$n"
  return 0
}
