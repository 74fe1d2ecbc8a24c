# Managed by mailprov: local changes are overwritten on the next apply.
# Mail that rspamd scored above antispam.add_header_score carries "X-Spam: Yes": file it in Junk.
require ["fileinto", "mailbox"];
if header :is "X-Spam" "Yes" {
  fileinto :create "Junk";
  stop;
}
