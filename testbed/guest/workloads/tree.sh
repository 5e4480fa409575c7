# tree: create, delete and move files and directories, including renames
# across directories, directory renames, deep paths and unusual names.
op_mkdir /proj
op_mkdir /proj/src
op_mkdir /proj/docs
op_write /proj/src/main.c "int main(void) { return 0; }"
op_write /proj/src/util.c "int add(int a, int b) { return a + b; }"
op_write /proj/docs/readme.txt "This project does nothing."
op_mkdir /proj/build
op_mkdir /proj/build/obj
op_fill /proj/build/obj/main.o 40 o
op_fill /proj/build/obj/util.o 12 u
op_sync
op_move /proj/docs/readme.txt /proj/README.txt
op_move /proj/src/util.c /proj/src/helpers.c
op_move /proj/docs /proj/documentation
op_mkdir /archive
op_move /proj/build /archive/build-1
op_rm /proj/src/main.c
op_write "/proj/name with spaces.txt" "spaces"
op_write "/proj/caf$(printf '\303\251').txt" "utf-8 name"
if [ "$GR_FS" = ext4 ]; then
  # NTFS forbids these characters in names.
  op_write '/proj/quote"back\slash|pipe.txt' "odd name"
fi
op_sync
op_mkdir /deep
op_mkdir /deep/a
op_mkdir /deep/a/b
op_mkdir /deep/a/b/c
op_mkdir /deep/a/b/c/d
op_write /deep/a/b/c/d/leaf.txt "deep leaf"
op_move /deep/a/b /deep/b
op_rm_r /archive
op_rmdir /proj/documentation
op_move /home/user/notes.txt /proj/notes.txt
op_rm /home/user/docs/readme.md
op_rmdir /home/user/docs
op_mkdir /proj/empty
op_sync
