//! Unit tests of path templates, most of them from tests/fixtures/templates.yaml.

use super::*;

#[test]
fn error_positions_count_lines_and_characters() {
    let err = PathTemplate::parse("é/{{ .Name }}\nx/{{ now | dat \"2006\" }}").expect_err("unknown function");
    let TemplateError::Invalid {
        line, column, action, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((*line, *column, action.as_str()), (2, 12, "{{ now | dat \"2006\" }}"));
    assert!(
        err.to_string().starts_with(
            "unknown function \"dat\" at line 2, column 12 in {{ now | dat \"2006\" }}: known functions are now, date,"
        ),
        "{err}"
    );
}

#[test]
fn long_actions_are_shortened_in_errors() {
    let source = format!("{{{{ nope {} }}}}", "x ".repeat(100));
    let err = PathTemplate::parse(&source).expect_err("unknown function");
    let TemplateError::Invalid { action, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(action.ends_with('…') && action.chars().count() == 121, "{action}");
}

#[test]
fn render_errors_name_the_action() {
    // Only a value typed at render time can fail: `default` mixing a string and an integer.
    let template = PathTemplate::parse("{{ .Name | default 5 | lower }}").expect("valid");
    let err = template
        .render(&TemplateVars::default())
        .expect_err("5 is not a string");
    assert_eq!(
        err.to_string(),
        "cannot render {{ .Name | default 5 | lower }}: the argument of lower must be a string, got an integer"
    );
    let vars = TemplateVars {
        name: "DB".into(),
        ..TemplateVars::default()
    };
    assert_eq!(template.render(&vars), Ok("db".to_string()));
}

#[test]
fn a_parsed_template_renders_many_times() {
    let template = PathTemplate::parse("{{ .Namespace }}/{{ now | date \"2006-01-02\" }}").expect("valid");
    let mut vars = TemplateVars::new(DateTime::from_timestamp(0, 0).expect("epoch"));
    vars.namespace = "a".into();
    assert_eq!(template.render(&vars).as_deref(), Ok("a/1970-01-01"));
    vars.namespace = "b".into();
    vars.now = DateTime::from_timestamp(86_400 * 365, 0).expect("valid");
    assert_eq!(template.render(&vars).as_deref(), Ok("b/1971-01-01"));
    assert_eq!(
        "{{ .Kind }}"
            .parse::<PathTemplate>()
            .map(|t| t.source().to_string())
            .as_deref(),
        Ok("{{ .Kind }}")
    );
}

/// tests/fixtures/templates.yaml: what each template renders to or which error it gets.
mod fixtures {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fixture {
        defaults: Vars,
        cases: Vec<Case>,
    }

    #[derive(Clone, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Vars {
        now: Option<DateTime<Utc>>,
        name: Option<String>,
        namespace: Option<String>,
        kind: Option<String>,
        schedule_name: Option<String>,
    }

    impl Vars {
        /// `self` with the values `over` sets.
        fn overridden_by(&self, over: &Vars) -> TemplateVars {
            let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone()).unwrap_or_default();
            TemplateVars {
                now: over.now.or(self.now).unwrap_or_default(),
                name: pick(&self.name, &over.name),
                namespace: pick(&self.namespace, &over.namespace),
                kind: pick(&self.kind, &over.kind),
                schedule_name: pick(&self.schedule_name, &over.schedule_name),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        name: String,
        template: String,
        #[serde(default)]
        vars: Vars,
        want: Option<String>,
        error: Option<String>,
        render_error: Option<String>,
    }

    /// What happened to one case, as text to compare with what the fixture expects.
    fn run(case: &Case, vars: &TemplateVars) -> Result<String, String> {
        let template = PathTemplate::parse(&case.template).map_err(|err| format!("parse error: {err}"))?;
        template.render(vars).map_err(|err| match err {
            TemplateError::Render { .. } => format!("render error: {err}"),
            TemplateError::Invalid { .. } => format!("render returned a parse error: {err}"),
        })
    }

    #[test]
    fn templates_from_fixtures() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates.yaml");
        let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {path}: {err}"));
        let fixture: Fixture = serde_saphyr::from_str(&text).unwrap_or_else(|err| panic!("parse {path}: {err}"));
        assert!(fixture.cases.len() > 100, "the fixture lost its cases");

        let mut failures = Vec::new();
        for case in &fixture.cases {
            let expectations = [&case.want, &case.error, &case.render_error]
                .iter()
                .filter(|e| e.is_some())
                .count();
            assert_eq!(
                expectations, 1,
                "case {:?} must have exactly one of want, error, render_error",
                case.name
            );
            let got = run(case, &fixture.defaults.overridden_by(&case.vars));
            let ok = match (&got, &case.want, &case.error, &case.render_error) {
                (Ok(text), Some(want), _, _) => text == want,
                (Err(err), _, Some(want), _) => err.starts_with("parse error: ") && err.contains(want.as_str()),
                (Err(err), _, _, Some(want)) => err.starts_with("render error: ") && err.contains(want.as_str()),
                _ => false,
            };
            if !ok {
                let want = case
                    .want
                    .as_ref()
                    .or(case.error.as_ref())
                    .or(case.render_error.as_ref());
                failures.push(format!(
                    "{}\n  template: {:?}\n  want:     {want:?}\n  got:      {got:?}",
                    case.name, case.template
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            fixture.cases.len(),
            failures.join("\n")
        );
    }
}
