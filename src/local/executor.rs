//! How a trial runs locally: as a process given the trial contract (nasop-trainer or the
//! pod template's command), or in-process against the NAS-Bench-201 tables.

use crate::tabular::Tabular;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub enum Executor {
    Process {
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    Tabular(Box<Tabular>),
}

/// Finds a program beside the running nasop binary or on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)));
    beside.filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// The executor a manifest asks for: its trial template's first container's command and
/// args (under `nasop wrap` with spec.wrap), `nasop nb201-trial …` for the tables, or
/// nasop-trainer when it has none.
pub fn from_template(
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
    wrap: Option<&crate::api::WrapSpec>,
) -> Result<Executor> {
    let container = template
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first());
    let mut command: Vec<String> = container
        .and_then(|c| c.command.clone())
        .unwrap_or_default();
    command.extend(container.and_then(|c| c.args.clone()).unwrap_or_default());
    let env: Vec<(String, String)> = container
        .and_then(|c| c.env.as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        command = vec!["nasop-trainer".into(), "train".into()];
    }
    let program = Path::new(&command[0])
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if wrap.is_none()
        && program == "nasop"
        && command.get(1).map(String::as_str) == Some("nb201-trial")
    {
        return Ok(Executor::Tabular(Box::new(Tabular::from_args(
            &command[2..],
        )?)));
    }
    let path = find_program(&command[0]).with_context(|| {
        if program == "nasop-trainer" {
            "nasop-trainer was not found beside nasop or on PATH; build it with `make build` (it needs libtorch, which make installs)".to_string()
        } else {
            format!("the trial command {:?} was not found beside nasop or on PATH", command[0])
        }
    })?;
    if let Some(wrap) = wrap {
        // The same wrapper as in a pod: this nasop, `wrap … --`, then the command.
        let nasop = std::env::current_exe().context("finding the running nasop for spec.wrap")?;
        let mut args = wrap.args();
        args.push(path.to_string_lossy().into_owned());
        args.extend(command[1..].iter().cloned());
        return Ok(Executor::Process {
            program: nasop,
            args,
            env,
        });
    }
    Ok(Executor::Process {
        program: path,
        args: command[1..].to_vec(),
        env,
    })
}
