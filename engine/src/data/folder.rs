//! `ImageFolder`: a labeled image directory `root/<class>/<image>`, read as torchvision's
//! `datasets.ImageFolder` reads it (classes sorted by name, label = index), with the designer
//! module's checks.

use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// File extensions kiln decodes (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// Whether `path` names an image kiln decodes, by extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One labeled image directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// The directory scanned.
    pub root: PathBuf,
    /// Class names in label order (sorted, as torchvision).
    pub classes: Vec<String>,
    /// Every image with its label, class by class, files sorted by name.
    pub samples: Vec<(PathBuf, usize)>,
    /// Things worth telling the user that do not stop training (empty classes, lone images).
    pub warnings: Vec<String>,
}

impl ImageFolder {
    /// Scans `root`. Errors with `NotLabeledDatasetError` when it holds no class folders or has
    /// images at its top level.
    pub fn scan(root: &Path) -> Result<Self, EngineError> {
        let entries = std::fs::read_dir(root).map_err(|e| EngineError::io(root, e))?;
        let mut classes = Vec::new();
        let mut loose = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| EngineError::io(root, e))?;
            let path = entry.path();
            if path.is_dir() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(EngineError::NotLabeledDataset(format!(
                        "class folder {} has a name that is not UTF-8; class names go into \
                         kiln.json and the metrics, so rename it",
                        path.display()
                    )));
                };
                classes.push(name.to_string());
            } else if is_image(&path) {
                loose.push(path);
            }
        }
        if !loose.is_empty() {
            loose.sort();
            return Err(EngineError::NotLabeledDataset(format!(
                "{} has {} image(s) at its top level (e.g. {}); put each image in a folder named \
                 after its class: {}/<class>/<image>",
                root.display(),
                loose.len(),
                loose[0].display(),
                root.display()
            )));
        }
        if classes.is_empty() {
            return Err(EngineError::NotLabeledDataset(format!(
                "{} has no class folders; expected {}/<class>/<image>",
                root.display(),
                root.display()
            )));
        }
        classes.sort();
        let mut samples = Vec::new();
        let mut warnings = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files = Vec::new();
            let mut seen = Vec::new();
            collect_images(&dir, &mut files, &mut seen)?;
            files.sort();
            match files.len() {
                0 => warnings.push(format!("class '{class}' ({}) has no images", dir.display())),
                1 => warnings.push(format!(
                    "class '{class}' ({}) has only one image",
                    dir.display()
                )),
                _ => {}
            }
            samples.extend(files.into_iter().map(|f| (f, label)));
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            samples,
            warnings,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Images under `dir`, recursively (torchvision walks class folders too), following symbolic
/// links to folders once: a folder reached again through a link is read once, and a link back
/// to a folder above it (a loop) is refused by path. `seen` holds the (device, inode) of each
/// folder read so far.
fn collect_images(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut Vec<(u64, u64)>,
) -> Result<(), EngineError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| EngineError::io(dir, e))?;
    let id = (meta.dev(), meta.ino());
    if seen.contains(&id) {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if dir
            .ancestors()
            .skip(1)
            .any(|a| a.canonicalize().is_ok_and(|a| a == canonical))
        {
            return Err(EngineError::NotLabeledDataset(format!(
                "{} is a symbolic link loop (it leads back to {}); remove the link",
                dir.display(),
                canonical.display()
            )));
        }
        return Ok(());
    }
    seen.push(id);
    let mut entries: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))? {
        entries.push(entry.map_err(|e| EngineError::io(dir, e))?.path());
    }
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_images(&path, out, seen)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks that train and validation have the same classes; `InvalidDatasetError` names the
/// classes each side lacks.
pub fn check_same_classes(train: &ImageFolder, val: &ImageFolder) -> Result<(), EngineError> {
    if train.classes == val.classes {
        return Ok(());
    }
    let only = |a: &ImageFolder, b: &ImageFolder| {
        a.classes
            .iter()
            .filter(|c| !b.classes.contains(c))
            .cloned()
            .collect::<Vec<_>>()
    };
    Err(EngineError::InvalidDataset(format!(
        "train ({}) and validation ({}) have different classes: only in train: [{}]; only in \
         validation: [{}]",
        train.root.display(),
        val.root.display(),
        only(train, val).join(", "),
        only(val, train).join(", ")
    )))
}
