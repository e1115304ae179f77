//! What doctor found: one line per check, and the exit code.

use std::fmt;

/// What doctor looks at; one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// The configuration file, its environment overrides and the admission policy.
    Configuration,
    /// Who doctor runs as (STS GetCallerIdentity): every other check needs AWS.
    AwsIdentity,
    /// The template's parameters against the policy and `stacks.parameters`.
    Template,
    /// The SSM parameters the template reads.
    SsmParameters,
    /// The sender of notifications in SES.
    SesIdentity,
    /// The users' bucket's event notifications.
    BucketNotification,
    /// `<customizer prefix>default/configure.d/`.
    CustomizerDefaults,
    /// The calls the controller makes, simulated against its policies.
    Permissions,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Configuration => "configuration",
            Check::AwsIdentity => "aws identity",
            Check::Template => "template",
            Check::SsmParameters => "ssm parameters",
            Check::SesIdentity => "ses identity",
            Check::BucketNotification => "bucket notification",
            Check::CustomizerDefaults => "customizer defaults",
            Check::Permissions => "permissions",
        })
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// As it should be.
    Ok,
    /// Broken: the install will not work as configured.
    Failed,
    /// Not known: the check could not be made.
    NotChecked,
}

/// One check's result: a line of doctor's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found (for a check not made: why).
    pub message: String,
    /// What the operator can do about it.
    pub fix: Option<String>,
}

impl Finding {
    pub(crate) fn ok(check: Check, message: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Ok,
            message: message.into(),
            fix: None,
        }
    }

    pub(crate) fn failed(
        check: Check,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            outcome: Outcome::Failed,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn unchecked(check: Check, why: impl Into<String>, fix: Option<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::NotChecked,
            message: why.into(),
            fix,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAIL",
            Outcome::NotChecked => "--",
        };
        write!(f, "{tag:<6}{}: ", self.check)?;
        if self.outcome == Outcome::NotChecked {
            f.write_str("not checked: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Why doctor stopped before the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// The configuration did not load: the other checks need it.
    Configuration,
    /// AWS could not be asked anything: doctor itself could not run.
    Aws,
}

/// Everything doctor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One per check made, in order.
    pub findings: Vec<Finding>,
    /// Set when doctor stopped early.
    pub halted: Option<Halt>,
}

impl Report {
    fn count(&self, outcome: Outcome) -> usize {
        self.findings
            .iter()
            .filter(|f| f.outcome == outcome)
            .count()
    }

    /// 2 when doctor could not reach AWS; 1 when a check failed, or one was not made and
    /// `allow_unchecked` is false; else 0.
    pub fn exit_code(&self, allow_unchecked: bool) -> u8 {
        if self.halted == Some(Halt::Aws) {
            2
        } else if self.count(Outcome::Failed) > 0
            || (self.count(Outcome::NotChecked) > 0 && !allow_unchecked)
        {
            1
        } else {
            0
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        let unchecked = self.count(Outcome::NotChecked);
        write!(
            f,
            "doctor: {} ok, {} failed, {unchecked} not checked",
            self.count(Outcome::Ok),
            self.count(Outcome::Failed),
        )?;
        match self.halted {
            Some(Halt::Configuration) => {
                f.write_str("; the other checks need a configuration that loads")?;
            }
            Some(Halt::Aws) => f.write_str("; AWS could not be asked, nothing else was checked")?,
            None if unchecked > 0 => {
                f.write_str(" (a check not made fails doctor unless --allow-unchecked)")?;
            }
            None => {}
        }
        writeln!(f)
    }
}
