use super::*;
use crate::api::NasExperiment;

const GOOD: &str = r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: nb201
spec:
  objectives:
    - metric: val_accuracy
      goal: maximize
      target: 0.95
    - metric: latency_ms
      goal: minimize
  constraints:
    - metric: params
      max: 1000000
  searchSpace:
    cell:
      nodes: 4
      operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]
    hyperparameters:
      - name: learning_rate
        float: {min: 0.001, max: 0.1, log: true}
      - name: batch_size
        categorical: ["64", "128"]
  strategy:
    algorithm: evolution
    seed: 7
    settings: {population: 20, sampleSize: 5}
  fidelity:
    algorithm: asha
    minEpochs: 2
    maxEpochs: 18
  earlyStopping:
    algorithm: medianStop
  budget:
    maxTrials: 50
    parallelism: 4
"#;

fn parse(yaml: &str) -> NasExperiment {
    serde_yaml::from_str(yaml).expect("parses")
}

fn error_for(edit: impl FnOnce(&mut NasExperimentSpec)) -> ValidationError {
    let mut exp = parse(GOOD);
    edit(&mut exp.spec);
    validate("nb201", &exp.spec).expect_err("must be rejected")
}

#[test]
fn a_full_manifest_validates_with_defaults() {
    let exp = validate("nb201", &parse(GOOD).spec).unwrap();
    assert_eq!(exp.objectives.len(), 2);
    assert!(exp.objectives[0].maximize && !exp.objectives[1].maximize);
    assert_eq!(exp.space.decisions().len(), 8);
    assert_eq!(exp.strategy.settings.population, 20);
    assert_eq!(
        exp.strategy.fidelity.as_ref().unwrap().rungs,
        vec![2, 6, 18]
    );
    assert_eq!(exp.budget.max_failed_trials, 3);
    assert_eq!(exp.budget.trial_epochs, 10);
    assert_eq!(exp.early_stopping.as_ref().unwrap().min_trials, 3);
}

#[test]
fn empty_operation_list_names_the_field() {
    let e = error_for(|s| s.search_space.cell.as_mut().unwrap().operations.clear());
    assert_eq!(e.field, "spec.searchSpace.cell.operations");
    assert!(e.problem.contains("at least one operation"), "{e}");
}

#[test]
fn settings_out_of_range_or_for_another_algorithm_are_named() {
    let e = error_for(|s| s.strategy.settings.sample_size = Some(50));
    assert_eq!(e.field, "spec.strategy.settings.sampleSize");
    assert!(e.problem.contains("out of range; use 1..=20"), "{e}");
    let e = error_for(|s| s.strategy.settings.learning_rate = Some(0.1));
    assert_eq!(e.field, "spec.strategy.settings.learningRate");
    assert!(
        e.problem.contains("setting of reinforce, not of evolution"),
        "{e}"
    );
}

#[test]
fn unknown_algorithm_lists_the_valid_ones() {
    let yaml = GOOD.replace("algorithm: evolution", "algorithm: annealing");
    let err = serde_yaml::from_str::<NasExperiment>(&yaml)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("annealing") && err.contains("evolution") && err.contains("bayesian"),
        "{err}"
    );
}

#[test]
fn duplicate_objectives_and_bad_constraints_are_named() {
    let e = error_for(|s| s.objectives[1].metric = "val_accuracy".into());
    assert_eq!(e.field, "spec.objectives[1].metric");
    let e = error_for(|s| s.constraints[0].max = None);
    assert_eq!(e.field, "spec.constraints[0]");
    let e = error_for(|s| s.constraints[0].min = Some(2e6));
    assert_eq!(e.field, "spec.constraints[0].min");
}

#[test]
fn hyperparameter_needs_exactly_one_kind() {
    let e =
        error_for(|s| s.search_space.hyperparameters[0].int = Some(IntRange { min: 1, max: 2 }));
    assert_eq!(e.field, "spec.searchSpace.hyperparameters[0]");
    let e = error_for(|s| {
        s.search_space.hyperparameters[0]
            .float
            .as_mut()
            .unwrap()
            .min = 0.0
    });
    assert_eq!(e.field, "spec.searchSpace.hyperparameters[0].float.min");
}

#[test]
fn fidelity_and_budget_ranges_are_named() {
    let e = error_for(|s| s.fidelity.as_mut().unwrap().min_epochs = 40);
    assert_eq!(e.field, "spec.fidelity.minEpochs");
    let e = error_for(|s| s.budget.parallelism = 0);
    assert_eq!(e.field, "spec.budget.parallelism");
}

#[test]
fn storage_and_warm_start_are_checked_by_field() {
    let storage = |claim: &str, sub: Option<&str>| StorageSpec {
        persistent_volume_claim: Some(PvcStorageSpec {
            claim_name: claim.into(),
            sub_path: sub.map(String::from),
        }),
        s3: None,
    };
    let e = error_for(|s| s.storage = Some(storage("Bad_Claim", None)));
    assert_eq!(e.field, "spec.storage.persistentVolumeClaim.claimName");
    for sub in ["/abs", "a/../b", "a//b", ""] {
        let e = error_for(|s| s.storage = Some(storage("ok", Some(sub))));
        assert_eq!(
            e.field, "spec.storage.persistentVolumeClaim.subPath",
            "{sub:?}"
        );
    }
    let mut exp = parse(GOOD);
    exp.spec.storage = Some(storage("nas-ckpt", Some("runs/nb201")));
    validate("nb201", &exp.spec).unwrap();

    let s3 = |yaml: &str| -> StorageSpec { serde_yaml::from_str(yaml).unwrap() };
    exp.spec.storage = Some(s3(
        "s3: {bucket: nas-models, prefix: runs/a, endpoint: 'http://s3.local:9000', credentialsSecret: s3-keys}",
    ));
    validate("nb201", &exp.spec).unwrap();
    for (yaml, field) in [
        ("s3: {bucket: No_Such}", "spec.storage.s3.bucket"),
        (
            "s3: {bucket: ok-bucket, prefix: /abs}",
            "spec.storage.s3.prefix",
        ),
        (
            "s3: {bucket: ok-bucket, endpoint: s3.local}",
            "spec.storage.s3.endpoint",
        ),
        (
            "s3: {bucket: ok-bucket, credentialsSecret: Bad}",
            "spec.storage.s3.credentialsSecret",
        ),
        ("{}", "spec.storage"),
        (
            "{s3: {bucket: ok-bucket}, persistentVolumeClaim: {claimName: c}}",
            "spec.storage",
        ),
    ] {
        let e = error_for(|s| s.storage = Some(s3(yaml)));
        assert_eq!(e.field, field, "{yaml}");
    }

    let e = error_for(|s| {
        s.warm_start = Some(WarmStartSpec {
            experiments: vec!["nb201".into()],
        })
    });
    assert_eq!(e.field, "spec.warmStart.experiments[0]");
    assert!(e.problem.contains("this experiment"), "{e}");
    let e = error_for(|s| {
        s.warm_start = Some(WarmStartSpec {
            experiments: vec![],
        })
    });
    assert_eq!(e.field, "spec.warmStart.experiments");
}

#[test]
fn final_training_defaults_to_the_largest_budget_and_is_checked_by_field() {
    let mut exp = parse(GOOD);
    exp.spec.final_training = Some(FinalTrainingSpec {
        top: None,
        epochs: None,
        seeds: Some(2),
    });
    let v = validate("nb201", &exp.spec).unwrap();
    let f = v.final_training.unwrap();
    assert_eq!((f.top, f.epochs, f.seeds), (3, 18, 2));
    assert_eq!(v.total_trials(), 50 + 6);
    // Without fidelity, the search's trial budget.
    exp.spec.fidelity = None;
    let f = validate("nb201", &exp.spec)
        .unwrap()
        .final_training
        .unwrap();
    assert_eq!(f.epochs, 10);

    let spec = |top, epochs, seeds| FinalTrainingSpec { top, epochs, seeds };
    let e = error_for(|s| s.final_training = Some(spec(Some(0), None, None)));
    assert_eq!(e.field, "spec.finalTraining.top");
    assert!(e.problem.contains("use 1..=16"), "{e}");
    let e = error_for(|s| s.final_training = Some(spec(None, None, Some(17))));
    assert_eq!(e.field, "spec.finalTraining.seeds");
    let e = error_for(|s| s.final_training = Some(spec(None, Some(0), None)));
    assert_eq!(e.field, "spec.finalTraining.epochs");
    // The winner is never picked on test data.
    let e = error_for(|s| {
        s.objectives[0].metric = "test_accuracy".into();
        s.final_training = Some(spec(None, None, None));
    });
    assert_eq!(e.field, "spec.objectives[0].metric");
    assert!(e.problem.contains("validation metric"), "{e}");
}

#[test]
fn wrap_needs_a_written_command_and_a_regex_with_two_captures() {
    let wrap = |w: WrapSpec| {
        move |s: &mut NasExperimentSpec| {
            s.wrap = Some(w);
        }
    };
    // GOOD's template names no command: nasop cannot wrap an image's entrypoint.
    let e = error_for(wrap(WrapSpec::default()));
    assert_eq!(e.field, "spec.trialTemplate.spec.containers[0].command");
    assert!(e.problem.contains("entrypoint"), "{e}");
    let with_command = |w: WrapSpec| {
        move |s: &mut NasExperimentSpec| {
            let t = s.trial_template.get_or_insert_with(Default::default);
            let spec = t.spec.get_or_insert_with(Default::default);
            if spec.containers.is_empty() {
                spec.containers.push(Default::default());
            }
            spec.containers[0].command = Some(vec!["python".into(), "train.py".into()]);
            s.wrap = Some(w);
        }
    };
    let e = error_for(with_command(WrapSpec {
        metrics_regex: Some("acc=(.*)".into()),
        ..WrapSpec::default()
    }));
    assert_eq!(e.field, "spec.wrap.metricsRegex");
    assert!(e.problem.contains("two groups"), "{e}");
    let e = error_for(with_command(WrapSpec {
        metrics_regex: Some("(unclosed".into()),
        ..WrapSpec::default()
    }));
    assert!(e.problem.contains("not a regular expression"), "{e}");
    let mut exp = parse(GOOD);
    with_command(WrapSpec {
        metrics_regex: Some(r"(?P<name>\w+): (?P<value>\S+)".into()),
        ..WrapSpec::default()
    })(&mut exp.spec);
    validate("nb201", &exp.spec).unwrap();
}
