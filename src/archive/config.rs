//! Archive settings from the environment (contract §12.2, decision 12).

use std::path::Path;

use super::adapter::{ArchiveConfig, Backend, PostgresConfig, S3Config};
use super::layout::normalise_prefix;
use crate::config::{boolean, err, int, non_blank, size, ConfigError, Env};

/// Reads `STARCITE_ARCHIVE_ADAPTER` and the chosen backend's settings.
///
/// `starcite start` defaults to `s3` (the reference's default) and needs its bucket;
/// `starcite dev` defaults to `fs` under the data directory.
pub fn from_env(env: &impl Env, dev: bool, data_dir: &Path) -> Result<ArchiveConfig, ConfigError> {
    const ADAPTER: &str = "STARCITE_ARCHIVE_ADAPTER";
    let default = if dev { "fs" } else { "s3" };
    let name = non_blank(env, ADAPTER)
        .map(|v| v.to_lowercase())
        .unwrap_or_else(|| default.to_owned());
    let backend = match name.as_str() {
        "fs" => Backend::Fs {
            dir: non_blank(env, "STARCITE_ARCHIVE_FS_DIR")
                .map(Into::into)
                .unwrap_or_else(|| data_dir.join("archive")),
        },
        "s3" => Backend::S3(s3(env)?),
        "postgres" => Backend::Postgres(postgres(env)?),
        other => {
            return Err(err(
                ADAPTER,
                format!("must be s3, postgres or fs, got {other:?}"),
            ))
        }
    };
    Ok(ArchiveConfig {
        backend,
        flush_interval_ms: int(
            env,
            "STARCITE_ARCHIVE_FLUSH_INTERVAL_MS",
            5000,
            1,
            86_400_000,
        )?,
        read_cache_bytes: size(env, "STARCITE_ARCHIVE_READ_CACHE_MAX_SIZE", 512 << 20)?,
    })
}

fn s3(env: &impl Env) -> Result<S3Config, ConfigError> {
    let bucket = non_blank(env, "STARCITE_S3_BUCKET").ok_or_else(|| {
        err(
            "STARCITE_S3_BUCKET",
            "is required with STARCITE_ARCHIVE_ADAPTER=s3 (or choose postgres or fs)",
        )
    })?;
    let endpoint = non_blank(env, "STARCITE_S3_ENDPOINT");
    if let Some(e) = &endpoint {
        check_endpoint(e).map_err(|reason| err("STARCITE_S3_ENDPOINT", reason))?;
    }
    Ok(S3Config {
        bucket,
        region: non_blank(env, "STARCITE_S3_REGION")
            .or_else(|| non_blank(env, "AWS_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned()),
        endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
        access_key_id: non_blank(env, "STARCITE_S3_ACCESS_KEY_ID")
            .or_else(|| non_blank(env, "AWS_ACCESS_KEY_ID")),
        secret_access_key: non_blank(env, "STARCITE_S3_SECRET_ACCESS_KEY")
            .or_else(|| non_blank(env, "AWS_SECRET_ACCESS_KEY")),
        session_token: non_blank(env, "STARCITE_S3_SESSION_TOKEN")
            .or_else(|| non_blank(env, "AWS_SESSION_TOKEN")),
        path_style: boolean(env, "STARCITE_S3_PATH_STYLE", true)?,
        prefix: normalise_prefix(env.get("STARCITE_S3_PREFIX").as_deref()),
        max_write_retries: int(env, "STARCITE_S3_MAX_WRITE_RETRIES", 4, 1, 100)? as u32,
    })
}

/// `http(s)://host[:port]` with no path (§12.2).
fn check_endpoint(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| format!("{e:?} must start with http:// or https://"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("{e:?} must be http(s)://host[:port] with no path"));
    }
    Ok(())
}

fn postgres(env: &impl Env) -> Result<PostgresConfig, ConfigError> {
    let url = non_blank(env, "DATABASE_URL")
        .or_else(|| non_blank(env, "STARCITE_POSTGRES_URL"))
        .ok_or_else(|| {
            err(
                "DATABASE_URL",
                "is required with STARCITE_ARCHIVE_ADAPTER=postgres (or set STARCITE_POSTGRES_URL)",
            )
        })?;
    Ok(PostgresConfig {
        url,
        pool_size: int(env, "DB_POOL_SIZE", 10, 1, 1000)? as u32,
        // §12.2: only the literal `true` runs migrations.
        migrate_on_boot: env
            .get("MIGRATE_ON_BOOT")
            .is_none_or(|v| v.trim() == "true"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<const N: usize>(
        dev: bool,
        vars: [(&str, &str); N],
    ) -> Result<ArchiveConfig, ConfigError> {
        from_env(&vars, dev, Path::new("/data"))
    }

    #[test]
    fn dev_defaults_to_a_local_directory_and_start_to_s3() {
        let c = parse(true, []).unwrap();
        assert_eq!(
            c.backend,
            Backend::Fs {
                dir: "/data/archive".into()
            }
        );
        assert_eq!(c.flush_interval_ms, 5000);
        assert_eq!(parse(false, []).unwrap_err().var, "STARCITE_S3_BUCKET");
    }

    #[test]
    fn missing_or_bad_settings_name_the_variable() {
        let e = parse(false, [("STARCITE_ARCHIVE_ADAPTER", " Postgres ")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        let e = parse(false, [("STARCITE_ARCHIVE_ADAPTER", "ftp")]).unwrap_err();
        assert_eq!(e.var, "STARCITE_ARCHIVE_ADAPTER");
        let e = parse(
            false,
            [
                ("STARCITE_S3_BUCKET", "b"),
                ("STARCITE_S3_ENDPOINT", "http://h:9000/path"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.var, "STARCITE_S3_ENDPOINT");
        let e = parse(true, [("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS", "0")]).unwrap_err();
        assert_eq!(e.var, "STARCITE_ARCHIVE_FLUSH_INTERVAL_MS");
    }

    #[test]
    fn s3_and_postgres_settings_are_read() {
        let c = parse(
            false,
            [
                ("STARCITE_S3_BUCKET", " events "),
                ("STARCITE_S3_ENDPOINT", "http://127.0.0.1:9000/"),
                ("STARCITE_S3_PREFIX", "/x/"),
                ("STARCITE_S3_PATH_STYLE", "no"),
            ],
        )
        .unwrap();
        let Backend::S3(s3) = c.backend else {
            panic!("not s3")
        };
        assert_eq!(s3.bucket, "events");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.prefix, "x");
        assert!(!s3.path_style);
        let c = parse(
            false,
            [
                ("STARCITE_ARCHIVE_ADAPTER", "postgres"),
                ("STARCITE_POSTGRES_URL", "postgres://u@h/db"),
                ("MIGRATE_ON_BOOT", "TRUE"),
            ],
        )
        .unwrap();
        let Backend::Postgres(pg) = c.backend else {
            panic!("not pg")
        };
        assert_eq!(pg.url, "postgres://u@h/db");
        assert!(!pg.migrate_on_boot, "only the literal `true` migrates");
    }
}
