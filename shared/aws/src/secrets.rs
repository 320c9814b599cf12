//! Reading a secret's string value from Secrets Manager, with errors that name the secret id and
//! never its value.

/// Why a secret could not be read.
#[derive(Debug)]
pub enum SecretError {
    /// The secret does not exist, may not be read, or holds no string (retrying will not help).
    Missing(String),
    /// Secrets Manager failed or could not be reached (a retry may help).
    Unavailable(String),
}

/// The string value of `secret_id`.
pub async fn secret_string(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<String, SecretError> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| {
            use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
            let se = e.as_service_error();
            // Not there, not allowed, not decryptable: a retry will not help.
            let missing = crate::errors::is_permanent(
                se.and_then(|se| se.code()),
                se.and_then(|se| se.message()),
            );
            let msg = format!(
                "cannot read secret {secret_id}: {}",
                crate::errors::sdk_error_text(&e)
            );
            if missing {
                SecretError::Missing(msg)
            } else {
                SecretError::Unavailable(msg)
            }
        })?;
    out.secret_string()
        .map(str::to_string)
        .ok_or_else(|| SecretError::Missing(format!("secret {secret_id} has no string value")))
}
