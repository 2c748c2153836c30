//! `kubectl apitoken decode`: username and password from a Basic or Bearer token. No cluster needed.

use std::io::Read;

use tokenmint::core::credential::decode;

use crate::error::Error;
use crate::reveal::userpass;

/// Flags of `decode`.
#[derive(clap::Args, Clone, Debug)]
pub struct DecodeArgs {
    /// A Basic token (with or without `Basic `) or a Bearer token `<prefix><accessKey>-<secretKey>`
    /// (with or without `Bearer `). Omit it or pass `-` to read it from stdin and keep it out of
    /// your shell history.
    pub token: Option<String>,
}

pub fn run(args: &DecodeArgs) -> Result<(), Error> {
    let input = match args.token.as_deref() {
        Some(token) if token != "-" => token.to_owned(),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::Io(format!("reading the token from stdin: {e}")))?;
            if text.trim().is_empty() {
                return Err(Error::Invalid(
                    "no token: pass it as an argument or on stdin".to_owned(),
                ));
            }
            text
        }
    };
    print!("{}", decode_to_text(&input)?);
    Ok(())
}

/// The `username:` and `password:` lines for `input`.
pub fn decode_to_text(input: &str) -> Result<String, Error> {
    // The error never repeats the input: it may be a credential with a typo.
    let decoded = decode(input).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(userpass(&decoded.username, &decoded.password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startree_bearer_example() {
        assert_eq!(
            decode_to_text("st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg").unwrap(),
            "username: XkQBXKr652MV1VF9\npassword: 5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n"
        );
        assert_eq!(
            decode_to_text("Bearer st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n")
                .unwrap(),
            "username: XkQBXKr652MV1VF9\npassword: 5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n"
        );
    }

    #[test]
    fn startree_basic_example_with_and_without_scheme() {
        let token = "NGNlZmI4NDgwZjhmNGE3ODg2YTVjOWRhMTA1NmE3YjU6eVlHVVlsV1BVaU5OTjQ2bkZaY09vM2FUT3FJQ1AyYUFrMXF4VDVCOEFKUT0=";
        let want = "username: 4cefb8480f8f4a7886a5c9da1056a7b5\npassword: yYGUYlWPUiNNN46nFZcOo3aTOqICP2aAk1qxT5B8AJQ=\n";
        assert_eq!(decode_to_text(token).unwrap(), want);
        assert_eq!(decode_to_text(&format!("Basic {token}")).unwrap(), want);
    }

    #[test]
    fn garbage_is_a_clear_error_that_does_not_echo_the_input() {
        for input in ["", "hello", "Basic !!!", "not a token at all"] {
            let err = decode_to_text(input).unwrap_err().to_string();
            assert!(err.starts_with("not a token"), "{err}");
            if !input.is_empty() {
                assert!(!err.contains(input), "{err}");
            }
        }
    }
}
