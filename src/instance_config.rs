//! This file is long (about 840 lines, 245 of them tests) because it is
//! the whole of Hail's billing arithmetic for two clouds: every resource
//! type, its machine tables and their checks against Hail's own values.
//!
//! The worker's instance config and the billed resources of each job.
//!
//! Hail's driver gives each worker a description of its VM, the *instance
//! config*, in the `INSTANCE_CONFIG` environment variable: standard base64 of
//! the JSON that `to_dict` writes in Hail's `batch/batch/cloud/gcp/instance_config.py`
//! (`GCPSlimInstanceConfig`) or `batch/batch/cloud/azure/instance_config.py`
//! (`AzureSlimInstanceConfig`). For every job the worker turns the job's request
//! into the resource list it sends in `job_started`, `job_complete` and
//! `billing_update`: Hail's `InstanceConfig.quantified_resources`
//! (`batch/batch/instance_config.py`) and the `to_quantified_resource` methods of
//! `batch/batch/resources.py` and `batch/batch/cloud/{gcp,azure}/resources.py`.
//! Where Hail asserts, this module returns an [`InstanceConfigError`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The cloud of a config (its `cloud` key; a missing key means `gcp`, as in
/// Hail's `batch/batch/cloud/utils.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// Google Cloud, `"gcp"`.
    Gcp,
    /// Microsoft Azure, `"azure"`.
    Azure,
}

impl Cloud {
    /// The wire name, also the value of the worker's `CLOUD` variable.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }
}

/// One billed resource of a job, serialised as `{"name": ..., "quantity": ...}`
/// (Hail's `QuantifiedResource`, `batch/batch/resources.py`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantifiedResource {
    /// Product and version, e.g. `compute/n1-preemptible/us-central1/1`.
    pub name: String,
    /// Amount per millisecond; its unit depends on the resource (see [`Resource`]).
    pub quantity: i64,
}

/// One entry of the config's `resources` list, chosen by its `type` key (Hail's
/// `gcp_resource_from_dict`, `azure_resource_from_dict`). The first field is
/// the resource `name`. Each variant says what it bills; "fraction" is the
/// worker fraction in 1024ths, `1024 * cores_mcpu / (cores * 1000)` rounded down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// `gcp_compute`: the job's mcpu.
    GcpCompute(String),
    /// `gcp_memory`: the job's memory in MiB.
    GcpMemory(String),
    /// `gcp_static_sized_disk` (name, `storage_in_gib`), boot or pd-ssd data disk: GiB × fraction.
    GcpStaticSizedDisk(String, u64),
    /// `gcp_local_ssd_static_sized_disk` (name, `storage_in_gib`): GiB × fraction.
    GcpLocalSsdStaticSizedDisk(String, u64),
    /// `gcp_dynamic_sized_disk`: the job's external storage in MiB (GiB × 1024); left out when 0.
    GcpDynamicSizedDisk(String),
    /// `gcp_ip_fee`: fraction.
    GcpIpFee(String),
    /// `gcp_service_fee`: the job's mcpu.
    GcpServiceFee(String),
    /// `gcp_support_logs_specs_and_firewall_fees`: the job's mcpu.
    GcpSupportLogsSpecsAndFirewallFees(String),
    /// `gcp_accelerator` (name, `number` of GPUs; `format_version` 1 means 1): number × fraction.
    GcpAccelerator(String, u64),
    /// `azure_vm`: fraction.
    AzureVm(String),
    /// `azure_static_sized_disk` (name, `storage_in_gib`, a billed disk size): GiB × fraction.
    AzureStaticSizedDisk(String, u64),
    /// `azure_dynamic_sized_disk`: see [`AzureDynamicDisk`]; left out when the storage is 0.
    AzureDynamicSizedDisk(AzureDynamicDisk),
    /// `azure_ip_fee`: fraction.
    AzureIpFee(String),
    /// `azure_service_fee`: the job's mcpu.
    AzureServiceFee(String),
}

/// An `azure_dynamic_sized_disk` resource: a job's external storage is billed
/// as the smallest disk of `disk_type` holding it, its size in MiB, under that
/// disk's entry in `latest_disk_versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureDynamicDisk {
    /// Disk family: `P`, `E` or `S`.
    pub disk_type: String,
    /// Azure location, e.g. `eastus`.
    pub location: String,
    /// Disk name (e.g. `P10`) to resource name.
    pub latest_disk_versions: BTreeMap<String, String>,
}

/// What is wrong with an instance config, or with a job's request against it.
/// Every message starts with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum InstanceConfigError {
    /// `INSTANCE_CONFIG` is not standard padded base64.
    #[error("INSTANCE_CONFIG: expected standard base64 with padding ({0}); set it to base64 of the driver's instance config JSON")]
    Base64(#[source] base64::DecodeError),
    /// The decoded bytes are not JSON.
    #[error("instance config: expected UTF-8 JSON ({0}); pass the JSON of Hail's InstanceConfig.to_dict")]
    Json(#[source] serde_json::Error),
    /// A key Hail reads is missing or holds the wrong kind of value.
    #[error(
        "{field}: expected {expected}, found {found}; fix the instance config the driver sent"
    )]
    Field {
        /// Path of the key, e.g. `resources[2].name`.
        field: String,
        /// What belongs there.
        expected: &'static str,
        /// The JSON found, abbreviated, or `nothing`.
        found: String,
    },
    /// `cloud` is neither `gcp` nor `azure` (the value found).
    #[error(
        "cloud: expected \"gcp\" or \"azure\", found {0:?}; this worker bills only those clouds"
    )]
    UnknownCloud(String),
    /// `version` is one Hail's `from_dict` rejects (cloud, version found, versions accepted).
    #[error("version: expected {2} for {0}, found {1}; run a worker that matches the driver")]
    UnsupportedVersion(&'static str, String, &'static str),
    /// `machine_type` is not in Hail's machine table (cloud, value found).
    #[error("machine_type: expected a {0} machine type in Hail's table, found {1:?}; use one of Hail's machine types")]
    UnknownMachineType(&'static str, String),
    /// A resource's `type` is not one of the cloud's types (key path, cloud, value found).
    #[error("{0}: expected a {1}_* resource type Hail's driver writes, found {2:?}; run a worker that matches the driver")]
    UnknownResourceType(String, &'static str, String),
    /// The job's memory in bytes is not whole MiB (Hail asserts it is).
    #[error("memory_bytes: expected a multiple of 1048576 (whole MiB), found {0}; round the job's memory to MiB")]
    MemoryNotWholeMiB(u64),
    /// A shared (not job-private) VM's cores are not a power of two up to 256 (Hail asserts they are).
    #[error("machine_type: expected a power of two up to 256 cores on a shared worker (job_private false), found {0}; use a pool machine type")]
    CoresNotPowerOfTwo(u32),
    /// No Azure disk of the type holds the storage, or the type is unknown (disk type, GiB).
    #[error("storage_gib: expected an Azure {0:?} disk (P, E or S, at most 32768 GiB) holding {1} GiB, found none; request less storage")]
    NoAzureDisk(String, u64),
    /// `latest_disk_versions` lacks the disk a job needs (key path, disk name such as `P10`).
    #[error("{0}: expected a resource name for disk {1}, found none; the driver lists every disk of the type")]
    MissingAzureDiskVersion(String, String),
    /// A quantity does not fit in an `i64` (resource name).
    #[error(
        "{0}: expected a quantity that fits in 64 bits; check the job's cores_mcpu and storage_gib"
    )]
    Overflow(String),
}

type Result<T> = std::result::Result<T, InstanceConfigError>;

/// Size facts of a machine type, from Hail's machine tables.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Machine {
    cores: u32,
    memory_bytes: u64,
    worker_type: &'static str,
}

/// A worker's instance config, as Hail's `from_dict` reads it. The machine
/// type's sizes are looked up once, at parse time.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    cloud: Cloud,
    machine_type: String,
    machine: Machine,
    /// Whether the VM is preemptible (GCP) or spot (Azure).
    pub preemptible: bool,
    /// Whether the data disk is a local SSD.
    pub local_ssd_data_disk: bool,
    /// The data disk size in GB, as written by the driver.
    pub data_disk_size_gb: u64,
    /// The boot disk size in GB, as written by the driver.
    pub boot_disk_size_gb: u64,
    /// Whether the VM serves one job (true) or is a shared pool worker.
    pub job_private: bool,
    /// The resources, in config order.
    pub resources: Vec<Resource>,
}

impl InstanceConfig {
    /// Decodes the `INSTANCE_CONFIG` variable: standard padded base64 of the
    /// JSON (worker.py's `base64.b64decode`); ASCII whitespace is skipped.
    pub fn from_base64(text: &str) -> Result<Self> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let engine = base64::engine::general_purpose::STANDARD;
        let bytes = engine
            .decode(compact)
            .map_err(InstanceConfigError::Base64)?;
        Self::from_json(&bytes)
    }

    /// Parses the JSON object of Hail's `to_dict`. GCP needs `version` 5
    /// (`GCPSlimInstanceConfig.from_dict`); Azure takes any `version` with a
    /// `resources` list, and version 1 without one (`AzureSlimInstanceConfig.from_dict`).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).map_err(InstanceConfigError::Json)?;
        let top = Obj::new(&value, String::new())?;
        let cloud = match top.map.get("cloud") {
            None => Cloud::Gcp,
            Some(Value::String(s)) if s == "gcp" => Cloud::Gcp,
            Some(Value::String(s)) if s == "azure" => Cloud::Azure,
            Some(Value::String(s)) => return Err(InstanceConfigError::UnknownCloud(s.clone())),
            Some(other) => return Err(top.bad("cloud", "\"gcp\" or \"azure\"", Some(other))),
        };
        let resources = top.map.get("resources").filter(|v| !v.is_null());
        let (wanted, expected) = match (cloud, resources) {
            (Cloud::Gcp, _) => (Some(5), "5"),
            (Cloud::Azure, None) => (Some(1), "1 (or any version with a resources list)"),
            (Cloud::Azure, Some(_)) => (None, ""),
        };
        if let Some(wanted) = wanted {
            let version = top.get("version", "an integer")?;
            if version.as_u64() != Some(wanted) {
                let found = abbreviate(Some(version));
                return Err(InstanceConfigError::UnsupportedVersion(
                    cloud.as_str(),
                    found,
                    expected,
                ));
            }
        }
        let resources = match resources {
            None if cloud == Cloud::Gcp => return Err(top.bad("resources", "a list", None)),
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let parsed = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| parse_resource(cloud, i, v));
                parsed.collect::<Result<_>>()?
            }
            Some(other) => return Err(top.bad("resources", "a list", Some(other))),
        };
        let machine_type = top.str("machine_type")?;
        let machine = match cloud {
            Cloud::Gcp => gcp_machine(&machine_type),
            Cloud::Azure => azure_machine(&machine_type),
        };
        let unknown =
            || InstanceConfigError::UnknownMachineType(cloud.as_str(), machine_type.clone());
        let machine = machine.ok_or_else(unknown)?;
        Ok(InstanceConfig {
            cloud,
            machine_type,
            machine,
            preemptible: top.bool("preemptible")?,
            local_ssd_data_disk: top.bool("local_ssd_data_disk")?,
            data_disk_size_gb: top.u64("data_disk_size_gb")?,
            boot_disk_size_gb: top.u64("boot_disk_size_gb")?,
            job_private: top.bool("job_private")?,
            resources,
        })
    }

    /// The config's cloud; Hail's worker checks it equals `CLOUD`.
    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    /// The machine type, e.g. `n1-standard-16`.
    pub fn machine_type(&self) -> &str {
        &self.machine_type
    }

    /// The VM's cores from Hail's machine table (`n1-standard-16` and
    /// `Standard_D16ds_v4` → 16); Hail's worker checks it equals `CORES`.
    pub fn cores(&self) -> u32 {
        self.machine.cores
    }

    /// The VM's memory in bytes from Hail's machine table (`instance_memory`).
    pub fn instance_memory_bytes(&self) -> u64 {
        self.machine.memory_bytes
    }

    /// Hail's worker type: `standard`, `highmem`, `highcpu`, `highgpu`, ... on
    /// GCP; the family letter `D`, `E` or `F` on Azure.
    pub fn worker_type(&self) -> &'static str {
        self.machine.worker_type
    }

    /// The Azure location, from the `azure_dynamic_sized_disk` resource. A GCP
    /// config holds no region (Hail's worker reads `REGION`): `None` there.
    pub fn location(&self) -> Option<&str> {
        self.resources.iter().find_map(|r| match r {
            Resource::AzureDynamicSizedDisk(disk) => Some(disk.location.as_str()),
            _ => None,
        })
    }

    /// The external storage in GiB to bill for a job requesting `storage_gib`:
    /// 0 on a job-private VM, whose own data disk holds it, else the request
    /// (worker.py `Job.__init__`). Pass it to [`Self::quantified_resources`].
    pub fn external_storage_gib(&self, storage_gib: u64) -> u64 {
        if self.job_private {
            0
        } else {
            storage_gib
        }
    }

    /// A job's billed resources in config order, a name possibly repeated (the
    /// boot disk and external storage can share one): Hail's
    /// `InstanceConfig.quantified_resources`. `cores_mcpu` in millicores,
    /// `memory_bytes` in bytes (whole MiB), `storage_gib` the external storage
    /// in GiB (see [`Self::external_storage_gib`]). Divisions round down.
    pub fn quantified_resources(
        &self,
        cores_mcpu: u64,
        memory_bytes: u64,
        storage_gib: u64,
    ) -> Result<Vec<QuantifiedResource>> {
        if memory_bytes % MIB != 0 {
            return Err(InstanceConfigError::MemoryNotWholeMiB(memory_bytes));
        }
        let cores = self.machine.cores;
        let shareable = cores.is_power_of_two() && cores <= 256;
        if !(self.job_private || shareable) {
            return Err(InstanceConfigError::CoresNotPowerOfTwo(cores));
        }
        let mcpu = u128::from(cores_mcpu);
        let fraction = 1024 * mcpu / (u128::from(cores) * 1000);
        let mut out = Vec::with_capacity(self.resources.len());
        for (i, resource) in self.resources.iter().enumerate() {
            use Resource::*;
            let (name, quantity) = match resource {
                GcpCompute(name)
                | GcpServiceFee(name)
                | GcpSupportLogsSpecsAndFirewallFees(name)
                | AzureServiceFee(name) => (name, Some(mcpu)),
                GcpMemory(name) => (name, Some(u128::from(memory_bytes / MIB))),
                GcpStaticSizedDisk(name, gib)
                | GcpLocalSsdStaticSizedDisk(name, gib)
                | AzureStaticSizedDisk(name, gib) => (name, u128::from(*gib).checked_mul(fraction)),
                GcpIpFee(name) | AzureVm(name) | AzureIpFee(name) => (name, Some(fraction)),
                GcpAccelerator(name, number) => (name, u128::from(*number).checked_mul(fraction)),
                GcpDynamicSizedDisk(_) | AzureDynamicSizedDisk(_) if storage_gib == 0 => continue,
                GcpDynamicSizedDisk(name) => (name, Some(u128::from(storage_gib) * 1024)),
                AzureDynamicSizedDisk(dynamic) => {
                    let disk_type = &dynamic.disk_type;
                    let no_disk =
                        || InstanceConfigError::NoAzureDisk(disk_type.clone(), storage_gib);
                    let (disk, gib) = azure_disk(disk_type, storage_gib).ok_or_else(no_disk)?;
                    let Some(name) = dynamic.latest_disk_versions.get(&disk) else {
                        let field = format!("resources[{i}].latest_disk_versions");
                        return Err(InstanceConfigError::MissingAzureDiskVersion(field, disk));
                    };
                    (name, Some(u128::from(gib) * 1024))
                }
            };
            let quantity = quantity.and_then(|q| i64::try_from(q).ok());
            let quantity = quantity.ok_or_else(|| InstanceConfigError::Overflow(name.clone()))?;
            out.push(QuantifiedResource {
                name: name.clone(),
                quantity,
            });
        }
        Ok(out)
    }
}

fn parse_resource(cloud: Cloud, index: usize, value: &Value) -> Result<Resource> {
    use Resource::*;
    let o = Obj::new(value, format!("resources[{index}]."))?;
    let typ = o.str("type")?;
    let name = o.str("name");
    let gib = || o.u64("storage_in_gib");
    Ok(match (cloud, typ.as_str()) {
        (Cloud::Gcp, "gcp_compute") => GcpCompute(name?),
        (Cloud::Gcp, "gcp_memory") => GcpMemory(name?),
        (Cloud::Gcp, "gcp_static_sized_disk") => GcpStaticSizedDisk(name?, gib()?),
        (Cloud::Gcp, "gcp_local_ssd_static_sized_disk") => {
            GcpLocalSsdStaticSizedDisk(name?, gib()?)
        }
        (Cloud::Gcp, "gcp_dynamic_sized_disk") => GcpDynamicSizedDisk(name?),
        (Cloud::Gcp, "gcp_ip_fee") => GcpIpFee(name?),
        (Cloud::Gcp, "gcp_service_fee") => GcpServiceFee(name?),
        (Cloud::Gcp, "gcp_support_logs_specs_and_firewall_fees") => {
            GcpSupportLogsSpecsAndFirewallFees(name?)
        }
        (Cloud::Gcp, "gcp_accelerator") => match o.get("format_version", "1 or 2")?.as_u64() {
            Some(1) => GcpAccelerator(name?, 1),
            Some(2) => GcpAccelerator(name?, o.u64("number")?),
            _ => return Err(o.bad("format_version", "1 or 2", o.map.get("format_version"))),
        },
        (Cloud::Azure, "azure_vm") => AzureVm(name?),
        (Cloud::Azure, "azure_static_sized_disk") => AzureStaticSizedDisk(name?, gib()?),
        (Cloud::Azure, "azure_dynamic_sized_disk") => {
            let expected = "an object of disk name to resource name";
            let versions = o.get("latest_disk_versions", expected)?;
            let Some(map) = versions.as_object() else {
                return Err(o.bad("latest_disk_versions", expected, Some(versions)));
            };
            let mut latest_disk_versions = BTreeMap::new();
            for (disk, v) in map {
                let key = format!("latest_disk_versions.{disk}");
                let s = v.as_str().ok_or_else(|| o.bad(&key, "a string", Some(v)))?;
                latest_disk_versions.insert(disk.clone(), s.to_owned());
            }
            let (disk_type, location) = (o.str("disk_type")?, o.str("location")?);
            AzureDynamicSizedDisk(AzureDynamicDisk {
                disk_type,
                location,
                latest_disk_versions,
            })
        }
        (Cloud::Azure, "azure_ip_fee") => AzureIpFee(name?),
        (Cloud::Azure, "azure_service_fee") => AzureServiceFee(name?),
        _ => {
            let field = format!("resources[{index}].type");
            return Err(InstanceConfigError::UnknownResourceType(
                field,
                cloud.as_str(),
                typ,
            ));
        }
    })
}

/// A JSON object plus the key path prefix for error messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, prefix: String) -> Result<Self> {
        let Some(map) = value.as_object() else {
            let field = match prefix.trim_end_matches('.') {
                "" => "instance config".to_owned(),
                path => path.to_owned(),
            };
            let found = abbreviate(Some(value));
            return Err(InstanceConfigError::Field {
                field,
                expected: "a JSON object",
                found,
            });
        };
        Ok(Obj { map, prefix })
    }

    fn bad(&self, key: &str, expected: &'static str, found: Option<&Value>) -> InstanceConfigError {
        let (field, found) = (format!("{}{key}", self.prefix), abbreviate(found));
        InstanceConfigError::Field {
            field,
            expected,
            found,
        }
    }

    fn get(&self, key: &str, expected: &'static str) -> Result<&'a Value> {
        self.map
            .get(key)
            .ok_or_else(|| self.bad(key, expected, None))
    }

    fn str(&self, key: &str) -> Result<String> {
        let v = self.get(key, "a string")?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.bad(key, "a string", Some(v)))
    }

    fn bool(&self, key: &str) -> Result<bool> {
        let v = self.get(key, "true or false")?;
        v.as_bool()
            .ok_or_else(|| self.bad(key, "true or false", Some(v)))
    }

    fn u64(&self, key: &str) -> Result<u64> {
        let v = self.get(key, "a non-negative integer")?;
        v.as_u64()
            .ok_or_else(|| self.bad(key, "a non-negative integer", Some(v)))
    }
}

/// The JSON text of `value`, cut to about 60 bytes; `nothing` when absent.
fn abbreviate(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "nothing".into();
    };
    let mut s = value.to_string();
    if s.len() > 60 {
        let cut = (0..=57).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// `text` as a core count, if spelled as in Hail's table keys and `allowed`.
fn parse_cores(text: &str, allowed: &[u32]) -> Option<u32> {
    let cores: u32 = text.parse().ok()?;
    (cores.to_string() == text && allowed.contains(&cores)).then_some(cores)
}

/// Hail's GCP `MACHINE_TYPE_TO_PARTS` (`batch/batch/cloud/gcp/resource_utils.py`).
fn gcp_machine(machine_type: &str) -> Option<Machine> {
    #[rustfmt::skip]
    const SPECIAL: [(&str, u32, u64, &str); 10] = [
        ("n2-highmem-128", 128, 864, "highmem"), ("a2-highgpu-1g", 12, 85, "highgpu"),
        ("a2-highgpu-2g", 24, 170, "highgpu"), ("a2-highgpu-4g", 48, 340, "highgpu"),
        ("a2-highgpu-8g", 96, 680, "highgpu"), ("a2-megagpu-16g", 96, 1360, "megagpu"),
        ("a2-ultragpu-1g", 12, 170, "ultragpu"), ("a2-ultragpu-2g", 24, 340, "ultragpu"),
        ("a2-ultragpu-4g", 48, 680, "ultragpu"), ("a2-ultragpu-8g", 96, 1360, "ultragpu"),
    ];
    if let Some(&(_, cores, gib, worker_type)) = SPECIAL.iter().find(|m| m.0 == machine_type) {
        return Some(Machine {
            cores,
            memory_bytes: gib * GIB,
            worker_type,
        });
    }
    let t4 = machine_type.strip_suffix("+nvidia-tesla-t4+1");
    let mut parts = t4.unwrap_or(machine_type).splitn(3, '-');
    let (family, kind, cores) = (parts.next()?, parts.next()?, parts.next()?);
    const N1_OTHER: &[u32] = &[2, 4, 8, 16, 32, 64, 96];
    const N2_OTHER: &[u32] = &[2, 4, 8, 16, 32, 48, 64, 80, 96];
    let (allowed, mib_per_core, worker_type): (&[u32], u64, _) = match (family, kind, t4) {
        ("n1", "standard", _) => (&[1, 2, 4, 8, 16, 32, 64], 3840, "standard"),
        ("n1", "highmem", _) => (N1_OTHER, 6656, "highmem"),
        ("n1", "highcpu", _) => (N1_OTHER, 924, "highcpu"),
        ("n2", "standard", None) => (&[2, 4, 8, 16, 32, 48, 64, 80, 96, 128], 4096, "standard"),
        ("n2", "highmem", None) => (N2_OTHER, 8192, "highmem"),
        ("n2", "highcpu", None) => (N2_OTHER, 1024, "highcpu"),
        ("g2", "standard", None) => (&[4, 8, 12, 16, 24, 32, 48, 96], 4096, "standard"),
        _ => return None,
    };
    let cores = parse_cores(cores, allowed)?;
    Some(Machine {
        cores,
        memory_bytes: u64::from(cores) * mib_per_core * MIB,
        worker_type,
    })
}

/// Hail's Azure `MACHINE_TYPE_TO_PARTS` (`batch/batch/cloud/azure/resource_utils.py`):
/// `Standard_D<cores>{ds,s}_v4`, `Standard_E<cores>{ds,s}_v4`, `Standard_F<cores>s_v2`.
fn azure_machine(machine_type: &str) -> Option<Machine> {
    let rest = machine_type.strip_prefix("Standard_")?;
    let (family, rest) = (rest.get(..1)?, rest.get(1..)?);
    let (cores, suffix) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit())?);
    let (allowed, gib_per_core, worker_type): (&[u32], u64, _) = match (family, suffix) {
        ("D", "ds_v4" | "s_v4") => (&[2, 4, 8, 16, 32, 48, 64], 4, "D"),
        ("E", "ds_v4" | "s_v4") => (&[2, 4, 8, 16, 20, 32, 48, 64], 8, "E"),
        ("F", "s_v2") => (&[2, 4, 8, 16, 32, 48, 64, 72], 2, "F"),
        _ => return None,
    };
    let cores = parse_cores(cores, allowed)?;
    Some(Machine {
        cores,
        memory_bytes: u64::from(cores) * gib_per_core * GIB,
        worker_type,
    })
}

/// The numbers of Azure managed disks; disk `<type><NUMBERS[i]>` holds `4 << i` GiB.
const AZURE_DISK_NUMBERS: [&str; 14] = [
    "1", "2", "3", "4", "6", "10", "15", "20", "30", "40", "50", "60", "70", "80",
];

/// The smallest Azure disk of `disk_type` with at least `storage_gib` GiB, as
/// (name, GiB), e.g. `("P10", 128)` (`azure_disk_from_storage_in_gib`); `S` starts at S4.
fn azure_disk(disk_type: &str, storage_gib: u64) -> Option<(String, u64)> {
    let first = match disk_type {
        "P" | "E" => 0,
        "S" => 3,
        _ => return None,
    };
    let sized = AZURE_DISK_NUMBERS
        .iter()
        .enumerate()
        .map(|(i, n)| (n, 4u64 << i));
    let (number, size) = sized.skip(first).find(|&(_, size)| size >= storage_gib)?;
    Some((format!("{disk_type}{number}"), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/hail/quantified-resources.json"
    );

    /// `config.quantified_resources(..)` as (name, quantity) pairs.
    fn pairs(config: &InstanceConfig, mcpu: u64, mib: u64, gib: u64) -> Vec<(String, i64)> {
        let got = config
            .quantified_resources(mcpu, mib * MIB, gib)
            .expect("quantify");
        got.into_iter().map(|r| (r.name, r.quantity)).collect()
    }

    fn owned(want: &[(&str, i64)]) -> Vec<(String, i64)> {
        want.iter().map(|&(n, q)| (n.to_owned(), q)).collect()
    }

    #[test]
    fn gcp_sample_matches_hail() {
        let text = std::fs::read_to_string(SAMPLE).expect("sample file");
        let sample: Value = serde_json::from_str(&text).expect("sample JSON");
        let env = sample["worker_environment"]["INSTANCE_CONFIG"]
            .as_str()
            .expect("env");
        let config = InstanceConfig::from_base64(env).expect("config");
        let instance = &sample["instance"];
        assert_eq!(config.cloud(), Cloud::Gcp);
        assert_eq!(Some(u64::from(config.cores())), instance["cores"].as_u64());
        assert_eq!(
            Some(config.instance_memory_bytes()),
            instance["instance_memory"].as_u64()
        );
        assert_eq!(Some(config.worker_type()), instance["worker_type"].as_str());
        assert_eq!(
            (config.location(), config.machine_type()),
            (None, "n1-standard-16")
        );
        assert!(!config.job_private && config.local_ssd_data_disk && config.preemptible);
        assert_eq!(
            (config.data_disk_size_gb, config.boot_disk_size_gb),
            (375, 10)
        );
        let json = sample["instance_config"].to_string();
        let direct = InstanceConfig::from_json(json.as_bytes()).expect("json");
        assert_eq!(direct.resources, config.resources);
        let cases = sample["quantified_resources"].as_array().expect("cases");
        assert_eq!(cases.len(), 5);
        for case in cases {
            let arg = |k: &str| case[k].as_u64().expect("input");
            let (mcpu, memory, storage) =
                (arg("cores_mcpu"), arg("memory_bytes"), arg("storage_gib"));
            let got = config
                .quantified_resources(mcpu, memory, storage)
                .expect("quantify");
            let want: Vec<QuantifiedResource> =
                serde_json::from_value(case["resources"].clone()).expect("want");
            assert_eq!(got, want, "case {case}");
            assert_eq!(
                serde_json::to_value(&got).ok().as_ref(),
                Some(&case["resources"])
            );
        }
        let wire = serde_json::to_string(&direct.quantified_resources(1000, 0, 0).expect("q"));
        assert!(wire
            .expect("serialise")
            .starts_with(r#"[{"name":"compute/n1-"#));
        let odd = &sample["memory_not_a_whole_number_of_MiB"];
        let (mcpu, memory) = (odd["cores_mcpu"].as_u64(), odd["memory_bytes"].as_u64());
        let err = config.quantified_resources(mcpu.expect("mcpu"), memory.expect("memory"), 0);
        let err = err.expect_err("Hail asserts whole MiB");
        assert!(
            matches!(err, InstanceConfigError::MemoryNotWholeMiB(966367641)),
            "{err}"
        );
        assert!(err.to_string().starts_with("memory_bytes:"), "{err}");
    }

    /// What `AzureSlimInstanceConfig.create` builds for a spot VM in eastus:
    /// VM, boot disk (10 GB → E3, 16 GiB), data disk unless local SSD
    /// (100 GB → P10, 128 GiB), dynamic P disk, IP fee, service fee.
    fn azure_config(machine_type: &str, local_ssd: bool, job_private: bool) -> InstanceConfig {
        let versions =
            AZURE_DISK_NUMBERS.map(|n| format!(r#""P{n}": "az/disk/P{n}_LRS/eastus/1""#));
        let data_disk = r#"{"type": "azure_static_sized_disk", "name": "az/disk/P10_LRS/eastus/1",
            "storage_in_gib": 128, "format_version": 1},"#;
        let text = format!(
            r#"{{"version": 2, "cloud": "azure", "machine_type": "{machine_type}", "preemptible": true,
            "local_ssd_data_disk": {local_ssd}, "data_disk_size_gb": {size}, "boot_disk_size_gb": 10,
            "job_private": {job_private}, "resources": [
            {{"type": "azure_vm", "name": "az/vm/{machine_type}/spot/eastus/1", "format_version": 1}},
            {{"type": "azure_static_sized_disk", "name": "az/disk/E3_LRS/eastus/1", "storage_in_gib": 16,
              "format_version": 1}}, {data}
            {{"type": "azure_dynamic_sized_disk", "disk_type": "P", "location": "eastus",
              "latest_disk_versions": {{{versions}}}, "format_version": 1}},
            {{"type": "azure_ip_fee", "name": "az/ip-fee/1024/1", "format_version": 1}},
            {{"type": "azure_service_fee", "name": "az/service-fee/1", "format_version": 1}}]}}"#,
            size = if local_ssd { 600 } else { 100 },
            data = if local_ssd { "" } else { data_disk },
            versions = versions.join(", "),
        );
        InstanceConfig::from_json(text.as_bytes()).expect("azure config")
    }

    #[test]
    fn azure_quantities_follow_hail_formulas() {
        let config = azure_config("Standard_D16ds_v4", true, false);
        assert_eq!(
            (config.cloud(), config.cores(), config.worker_type()),
            (Cloud::Azure, 16, "D")
        );
        assert_eq!(
            (config.instance_memory_bytes(), config.location()),
            (64 * GIB, Some("eastus"))
        );
        let (vm, e3) = (
            "az/vm/Standard_D16ds_v4/spot/eastus/1",
            "az/disk/E3_LRS/eastus/1",
        );
        let (ip, fee) = ("az/ip-fee/1024/1", "az/service-fee/1");
        let (p3, p10) = ("az/disk/P3_LRS/eastus/1", "az/disk/P10_LRS/eastus/1");
        // 1 core: fraction 1024*1000//16000 = 64; boot disk 16 GiB × 64; no external storage.
        let want = [(vm, 64), (e3, 1024), (ip, 64), (fee, 1000)];
        assert_eq!(pairs(&config, 1000, 4096, 0), owned(&want));
        // 4 cores, 100 GiB: fraction 256; P10 (128 GiB) is the smallest P disk >= 100 GiB.
        let want = [(vm, 256), (e3, 4096), (p10, 131072), (ip, 256), (fee, 4000)];
        assert_eq!(pairs(&config, 4000, 16384, 100), owned(&want));
        // 250 mcpu, 10 GiB: fraction 16; P3 (16 GiB).
        let want = [(vm, 16), (e3, 256), (p3, 16384), (ip, 16), (fee, 250)];
        assert_eq!(pairs(&config, 250, 1024, 10), owned(&want));
        let err = config
            .quantified_resources(1000, 0, 40000)
            .expect_err("over P80");
        assert!(
            matches!(err, InstanceConfigError::NoAzureDisk(_, 40000)),
            "{err}"
        );

        // Job-private E48 with a P10 data disk: 48 cores is fine, fraction 1024*1000//48000 = 21.
        let config = azure_config("Standard_E48s_v4", false, true);
        assert_eq!(
            (config.cores(), config.instance_memory_bytes()),
            (48, 384 * GIB)
        );
        assert_eq!(config.external_storage_gib(50), 0);
        let vm = "az/vm/Standard_E48s_v4/spot/eastus/1";
        let want = [(vm, 21), (e3, 336), (p10, 2688), (ip, 21), (fee, 1000)];
        assert_eq!(pairs(&config, 1000, 8192, 0), owned(&want));
        let shared = azure_config("Standard_E48s_v4", false, false);
        let err = shared.quantified_resources(1000, 0, 0);
        assert!(matches!(
            err,
            Err(InstanceConfigError::CoresNotPowerOfTwo(48))
        ));
    }

    #[test]
    fn machine_tables() {
        #[rustfmt::skip]
        let gcp = [("n1-standard-1", Some(1)), ("n1-highcpu-96+nvidia-tesla-t4+1", Some(96)),
            ("n2-highmem-128", Some(128)), ("g2-standard-24", Some(24)), ("a2-megagpu-16g", Some(96)),
            ("n1-standard-3", None), ("n1-standard-016", None), ("n2-standard-4+nvidia-tesla-t4+1", None),
            ("n1", None)];
        for (machine_type, cores) in gcp {
            assert_eq!(
                gcp_machine(machine_type).map(|m| m.cores),
                cores,
                "{machine_type}"
            );
        }
        #[rustfmt::skip]
        let azure = [("Standard_E20ds_v4", Some(20)), ("Standard_F72s_v2", Some(72)),
            ("Standard_F8ds_v2", None), ("Standard_D3s_v4", None), ("Standard_DE4s_v4", None), ("Standard_", None)];
        for (machine_type, cores) in azure {
            assert_eq!(
                azure_machine(machine_type).map(|m| m.cores),
                cores,
                "{machine_type}"
            );
        }
        assert_eq!(
            gcp_machine("n1-highcpu-2").map(|m| m.memory_bytes),
            Some(1848 * MIB)
        );
        assert_eq!(azure_disk("S", 1), Some(("S4".into(), 32)));
        assert_eq!(azure_disk("P", 32768), Some(("P80".into(), 32768)));
    }

    const GCP: &str = r#"{"version": 5, "cloud": "gcp", "machine_type": "n1-standard-4",
        "preemptible": false, "local_ssd_data_disk": false, "data_disk_size_gb": 100,
        "boot_disk_size_gb": 10, "job_private": false, "resources": [{"type": "gcp_accelerator",
        "name": "accelerator/t4-nonpreemptible/us-central1/1", "format_version": 2, "number": 2}]}"#;

    #[test]
    fn versions_and_errors_name_the_field() {
        let config = InstanceConfig::from_json(GCP.as_bytes()).expect("gcp");
        let want = [("accelerator/t4-nonpreemptible/us-central1/1", 1024)];
        assert_eq!(pairs(&config, 2000, 0, 0), owned(&want));
        let no_cloud = GCP.replace(r#""cloud": "gcp", "#, "");
        let config = InstanceConfig::from_json(no_cloud.as_bytes()).expect("no cloud key");
        assert_eq!(config.cloud(), Cloud::Gcp);
        let azure_v1 = GCP
            .replace("gcp\"", "azure\"")
            .replace(r#""resources""#, r#""x""#);
        let azure_v1 = azure_v1.replace(r#""version": 5"#, r#""version": 1"#);
        let azure_v1 = azure_v1.replace("n1-standard-4", "Standard_F72s_v2");
        let config = InstanceConfig::from_json(azure_v1.as_bytes()).expect("azure v1");
        assert!(config.resources.is_empty() && config.cores() == 72);
        let e = InstanceConfig::from_base64("not base64!")
            .expect_err("base64")
            .to_string();
        assert!(
            e.starts_with("INSTANCE_CONFIG: expected standard base64"),
            "{e}"
        );
        let e = InstanceConfig::from_json(b"[1]")
            .expect_err("array")
            .to_string();
        assert!(
            e.starts_with("instance config: expected a JSON object"),
            "{e}"
        );
        let azure_v3 = azure_v1.replace(r#""version": 1"#, r#""version": 3"#);
        #[rustfmt::skip]
        let cases = [
            (GCP.replace("gcp_accelerator", "gcp_teleporter"), "resources[0].type: expected a gcp_* resource type Hail's driver writes, found \"gcp_teleporter\""),
            (GCP.replace("gcp_accelerator", "azure_vm"), "resources[0].type: expected a gcp_*"),
            (GCP.replace(r#""cloud": "gcp""#, r#""cloud": "aws""#), "cloud: expected \"gcp\" or \"azure\", found \"aws\""),
            (GCP.replace(r#""version": 5"#, r#""version": 4"#), "version: expected 5 for gcp, found 4"),
            (azure_v3, "version: expected 1 (or any version with a resources list) for azure, found 3"),
            (GCP.replace("n1-standard-4", "n1-standard-5"), "machine_type: expected a gcp machine type"),
            (GCP.replace(r#""format_version": 2"#, r#""format_version": 3"#), "resources[0].format_version: expected 1 or 2, found 3"),
            (GCP.replace(r#""number": 2"#, r#""number": "2""#), "resources[0].number: expected a non-negative integer, found \"2\""),
            (GCP.replace("job_private", "job_privat"), "job_private: expected true or false, found nothing"),
            (GCP.replace(r#""resources": ["#, r#""resources": null, "x": ["#), "resources: expected a list, found nothing"),
        ];
        for (text, prefix) in cases {
            let e = InstanceConfig::from_json(text.as_bytes())
                .expect_err(&text)
                .to_string();
            assert!(e.starts_with(prefix), "{e}");
        }
    }
}
