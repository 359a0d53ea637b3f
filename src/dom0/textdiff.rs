//! dom0: a line diff of two small texts (a configuration file before and after `init` changes
//! it), shown to the user before the change. Lines are printed as they are: callers pass text
//! that is dom0's own or already sanitized.

/// Most lines compared (configuration files are far smaller); beyond, the whole is shown
/// as removed and added.
const MAX_LINES: usize = 2000;

/// `--- NAME` / `+++ NAME (new)` then every line prefixed by ` `, `-` or `+`.
pub fn unified(name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = format!("--- {name}\n+++ {name} (new)\n");
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        for l in &a {
            out += &format!("-{l}\n");
        }
        for l in &b {
            out += &format!("+{l}\n");
        }
        return out;
    }
    // Longest common subsequence table, from the ends.
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out += &format!(" {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < m && (i == n || t[i][j + 1] > t[i + 1][j]) {
            out += &format!("+{}\n", b[j]);
            j += 1;
        } else {
            out += &format!("-{}\n", a[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_are_marked_and_the_rest_kept() {
        let d = unified("f", "a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "--- f\n+++ f (new)\n a\n-b\n+B\n c\n+d\n");
        assert_eq!(unified("f", "", "x\n"), "--- f\n+++ f (new)\n+x\n");
    }
}
