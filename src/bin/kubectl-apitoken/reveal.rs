//! `kubectl apitoken reveal`: prints the credential from the token's Secret, to stdout only.

use tokenmint::api::ApiToken;
use tokenmint::core::credential::Credential;
use tokenmint::core::token::secret::{Observed, observe};

use crate::cluster::Target;
use crate::error::Error;
use crate::rotate::final_state;

/// The forms `reveal` can print.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Form {
    /// `<prefix><accessKey>-<secretKey>`
    #[default]
    Bearer,
    /// base64 of `<accessKey>:<secretKey>`
    Basic,
    /// `username: ...` and `password: ...` lines
    Userpass,
    /// `Authorization: Bearer <token>`
    Header,
}

/// Flags of `reveal`.
#[derive(clap::Args, Clone, Debug)]
pub struct RevealArgs {
    /// Name of the ApiToken.
    pub name: String,
    /// Which form of the credential to print.
    #[arg(long, value_enum, default_value_t = Form::Bearer)]
    pub form: Form,
}

pub async fn run(target: &Target, args: &RevealArgs) -> Result<(), Error> {
    let name = args.name.as_str();
    let token = target.get_token(name).await?;
    let qualified = target.qualified(name);
    if let Some(state) = final_state(&token) {
        return Err(Error::State(format!(
            "apitoken {qualified} is {state}: its credential was deleted and cannot be revealed"
        )));
    }
    let secret_name = secret_name(&token);
    let secret = target.get_secret(&secret_name).await?;
    // The seal key is the operator's; without it the seal cannot be checked here, so the credential
    // must instead match the fingerprint the operator recorded in status.
    let unknown_key =
        tokenmint::core::seal::SealKey::generate(&mut tokenmint::core::credential::os_rng());
    let credential = match observe(&token, secret.as_ref(), &unknown_key) {
        Observed::Missing => {
            return Err(Error::State(format!(
                "the Secret {}/{secret_name} of apitoken {qualified} does not exist yet \
                 (phase {}); is the tokenmint operator running?",
                target.namespace,
                token
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or("unknown", |p| p.as_str())
            )));
        }
        Observed::Foreign => {
            return Err(Error::State(format!(
                "the Secret {}/{secret_name} is not controlled by apitoken {qualified}; \
                 refusing to reveal it",
                target.namespace
            )));
        }
        Observed::Owned { held: Err(why), .. } => {
            return Err(Error::State(format!(
                "the credential in Secret {}/{secret_name} was altered ({why}); the operator \
                 replaces it with a new one: try again in a moment",
                target.namespace
            )));
        }
        Observed::Owned { held: Ok(held), .. } => {
            let recorded = token.status.as_ref().and_then(|s| s.fingerprint.as_deref());
            if recorded.is_some_and(|f| f != held.fingerprint()) {
                return Err(Error::State(format!(
                    "the credential in Secret {}/{secret_name} does not match the fingerprint \
                     apitoken {qualified} records; it is being replaced: try again in a moment",
                    target.namespace
                )));
            }
            held.credential
        }
    };
    print!("{}", render(&credential, args.form));
    Ok(())
}

/// Where the credential lives: what the operator reported, else what the spec asks for, else the name.
pub fn secret_name(token: &ApiToken) -> String {
    token
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| token.secret_name().to_owned())
}

/// The credential in `form`, ending in a newline.
pub fn render(credential: &Credential, form: Form) -> String {
    match form {
        Form::Bearer => format!("{}\n", credential.bearer()),
        Form::Basic => format!("{}\n", credential.basic()),
        Form::Userpass => userpass(&credential.access_key, &credential.secret_key),
        Form::Header => format!("Authorization: Bearer {}\n", credential.bearer()),
    }
}

/// `username: ...\npassword: ...\n`, shared with `decode`.
pub fn userpass(username: &str, password: &str) -> String {
    format!("username: {username}\npassword: {password}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startree() -> Credential {
        Credential {
            prefix: "st-".into(),
            access_key: "XkQBXKr652MV1VF9".into(),
            secret_key: "5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg".into(),
        }
    }

    #[test]
    fn every_form_of_the_startree_example() {
        let c = startree();
        assert_eq!(
            render(&c, Form::Bearer),
            "st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n"
        );
        assert_eq!(
            render(&c, Form::Header),
            "Authorization: Bearer st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n"
        );
        assert_eq!(
            render(&c, Form::Userpass),
            "username: XkQBXKr652MV1VF9\npassword: 5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n"
        );
        let basic = render(&c, Form::Basic);
        let decoded = tokenmint::core::credential::decode(basic.trim()).unwrap();
        assert_eq!(decoded.username, c.access_key);
        assert_eq!(decoded.password, c.secret_key);
    }

    #[test]
    fn secret_name_prefers_status_then_spec_then_name() {
        let mut token = ApiToken::new(
            "t",
            serde_json::from_value(serde_json::json!({"role": "reader"})).unwrap(),
        );
        assert_eq!(secret_name(&token), "t");
        token.spec.secret_name = Some("from-spec".into());
        assert_eq!(secret_name(&token), "from-spec");
        token.status = Some(tokenmint::api::ApiTokenStatus {
            secret_name: Some("from-status".into()),
            ..Default::default()
        });
        assert_eq!(secret_name(&token), "from-status");
    }
}
