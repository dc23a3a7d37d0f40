// Implements: OutputFolder, the folder a user hands t2i to write into (--output_dir). Two rules
// keep a user's files safe there:
//   one writer - `.t2i.lock` is held with flock(2) for the whole run (the kernel releases it when
//     the process ends, however it ends), so a second run in the same folder fails at once;
//   a manifest - `.t2i-manifest.json` lists the top-level entries t2i created. An entry is added
//     before it is written, so t2i replaces or deletes only what the manifest lists and refuses
//     to touch anything else (a user's `unet/`, someone else's `checkpoint-500/`).
// Temporaries of interrupted writes (`NAME.tmp-PID`, `NAME.old-PID`, `.NAME.deleting-PID` of
// entries t2i owns) are swept when the folder is opened.
#pragma once

#include <set>
#include <string>

namespace t2i::io {

class OutputFolder {
  public:
    // Creates `dir` (and its parents) if needed, takes the lock and reads the manifest. Throws
    // when another process holds the lock, naming its pid.
    explicit OutputFolder(std::string dir);
    ~OutputFolder();
    OutputFolder(const OutputFolder&)            = delete;
    OutputFolder& operator=(const OutputFolder&) = delete;

    const std::string& path() const { return dir_; }
    std::string file(const std::string& name) const { return dir_ + "/" + name; }

    // Whether t2i created top-level entry `name` here (it is in the manifest).
    bool owns(const std::string& name) const { return owned_.count(name) > 0; }
    // Before creating or replacing top-level entry `name`: throws when it exists and t2i did not
    // create it; otherwise records it in the manifest (written atomically) first.
    void claim(const std::string& name);
    // After deleting `name`: drops it from the manifest.
    void forget(const std::string& name);
    // Whether the folder had a manifest when it was opened (t2i before issue 10 wrote none).
    bool had_manifest() const { return had_manifest_; }
    // Records an existing entry as t2i's own (a folder an earlier t2i version wrote).
    void adopt(const std::string& name);
    // Throws naming the first of `names` that exists here and that t2i did not create, with
    // `hint` appended: a check before work starts, so that a conflict never costs a run.
    void check_not_foreign(const std::set<std::string>& names, const std::string& hint) const;

  private:
    void write_manifest() const;
    void sweep_temporaries();

    std::string dir_;
    int lock_fd_ = -1;
    std::set<std::string> owned_;
    bool had_manifest_ = false;
};

}  // namespace t2i::io
