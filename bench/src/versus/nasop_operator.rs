//! The nasop operator under test: `nasop operator` as a child process, running as a
//! service account of its own so that the audit log tells its requests apart.

use anyhow::{Context, Result, bail};
use std::process::{Child, Command, Stdio};

/// The nasop operator as a child process, running as a service account of its own.
pub struct NasopOperator {
    pub child: Child,
    namespace: String,
    kubeconfig: std::path::PathBuf,
    flags: Vec<String>,
}

const NASOP_ACCOUNT: &str = "nasop-bench-operator";

impl NasopOperator {
    /// A service account bound to cluster-admin (RBAC does not change what it requests), and
    /// a kubeconfig with its token.
    pub fn start(namespace: &str, flags: &str) -> Result<NasopOperator> {
        let kubectl = |args: &[&str]| -> Result<String> {
            let out = Command::new("kubectl").args(args).output()?;
            if !out.status.success() {
                bail!(
                    "kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        kubectl(&["create", "serviceaccount", "-n", namespace, NASOP_ACCOUNT])?;
        kubectl(&[
            "create",
            "clusterrolebinding",
            &format!("{NASOP_ACCOUNT}-{namespace}"),
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount={namespace}:{NASOP_ACCOUNT}"),
        ])?;
        let token = kubectl(&[
            "create",
            "token",
            "-n",
            namespace,
            NASOP_ACCOUNT,
            "--duration",
            "24h",
        ])?;
        let server = kubectl(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])?;
        let dir = std::env::temp_dir().join(format!("nasop-versus-{namespace}"));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: t, user: u, namespace: {namespace}}}}}]\ncurrent-context: c\n"
            ),
        )?;
        let flags: Vec<String> = flags.split_whitespace().map(String::from).collect();
        let child = Self::spawn(namespace, &kubeconfig, &flags)?;
        Ok(NasopOperator {
            child,
            namespace: namespace.to_string(),
            kubeconfig,
            flags,
        })
    }

    fn spawn(namespace: &str, kubeconfig: &std::path::Path, flags: &[String]) -> Result<Child> {
        let dir = kubeconfig.parent().unwrap_or(std::path::Path::new("."));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("operator.log"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Command::new(crate::nasop_binary()?)
            .args(["operator", "--namespace", namespace, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(flags)
            .env("KUBECONFIG", kubeconfig)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting nasop operator")
    }

    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.namespace, &self.kubeconfig, &self.flags)?;
        Ok(())
    }

    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{NASOP_ACCOUNT}", self.namespace)
    }
}

impl Drop for NasopOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "clusterrolebinding",
                &format!("{NASOP_ACCOUNT}-{}", self.namespace),
            ])
            .output();
    }
}
